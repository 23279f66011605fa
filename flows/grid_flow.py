"""Flow ``heft-grid``: a grid as one DAG of unique steps on a task runner, then one report.

The cells are planned and validated once; their steps are de-duplicated by key
(heft/grids/plan.py), so a ReFT-layer sweep trains LoRA once, and each unique step is
submitted once with its parent's future as its input: independent branches run at the same
time on ``workers`` threads or Dask workers (flows/runners.py).  With ``deployment`` the
cells are fanned out to a work pool instead (flows/grid_fanout.py).  Each cell keeps its own
MLflow run (nested under the grid's) and its model.  Grid presets: deployments/grids/*.yaml.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from contextlib import ExitStack
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.grid_fanout import cancel_child_runs, fan_out
from flows.runners import check_engine, on_task_runner
from heft.config import ConfigError, flat_params
from heft.grids.plan import GridPlan, plan_cells
from heft.grids.report import CellResult, champion, write_report
from heft.grids.spec import Cell, GridSpec, expand, load_grid
from heft.inference.mlflow_model import task_name, version_description
from heft.modes import MODES
from heft.plan import Plan
from heft.progress import say
from heft.run.execute import execute
from heft.run.result import RunResult, row
from heft.store.artifacts import ArtifactStore
from heft.tracking import Tracker, experiment_id
from heft.grids.plots import ablation_axes
from heft.tracking import views
from heft.tracking.client import compare_url, save_view, ui_url, view_url
from heft.tracking.vocabulary import all_names
from heft.tracking.context import source_tags
from heft.tracking.orphans import close_orphans_note
from tasks.models import register_task
from tasks.pipeline_run import PipelineRun
from tasks.stages import link_builder

DEFAULT_GRID = "deployments/grids/reft-layers.yaml"


def run_cells(grid: GridPlan, store: ArtifactStore, grid_run: Tracker, spec: GridSpec) -> list[RunResult]:
    """Every unique step once on the spec's task runner; then each cell's MLflow run gets its
    results and model.  A step a cell shares with an earlier cell counts as reused there."""
    steps = list(grid.steps.values())
    with ExitStack() as stack:
        pipelines = [stack.enter_context(PipelineRun.start(p, store, grid_run, c.run_name,
                                                           c.mlflow_tags(spec.name, grid_run.run_id)))
                     for c, p in zip(grid.cells, grid.plans)]
        done = execute(steps, store, on_task_runner(grid, store, [p.run for p in pipelines], spec))
        out = []
        for i, (planned, pipeline) in enumerate(zip(grid.plans, pipelines)):
            rows = []
            for step in planned.steps:
                outcome = done[step.key]
                first = grid.users[step.key][0] == i
                seen = outcome if first else dataclasses.replace(outcome, state="Cached", reused=True)
                rows.append(row(seen))
                if not first or outcome.reused:
                    link_builder(pipeline.run, step, outcome.artifact)
            out.append(pipeline.finish({s.name: done[s.key].artifact for s in planned.steps}, rows))
            pipeline.seconds = out[-1].seconds  # the cell's Duration: its own steps, not the grid's
    return out


def register_best(name: str, cells: list[Cell], results: list[CellResult], runs: list[RunResult],
                  tracking_uri: str, grid_name: str) -> dict:
    """Register the cell with the best validation accuracy.  Never the best held-out accuracy:
    choosing on the held-out rows would make the reported held-out number optimistic.  The
    version points at the cell's run; it becomes champion only when it beats the champion on
    the same data, else challenger, and the line printed says which and why."""
    best = champion([r.valid_accuracy for r in results])  # ties: the first cell (the report says so)
    if best is None:
        raise ConfigError(f"--register {name}: no cell of grid {grid_name!r} trained a model with a "
                          "validation accuracy (data.valid_size=0, or untrained cells only)")
    cell, result, run = cells[best], results[best], runs[best]
    m = run.metrics
    method = MODES[cell.method].title
    tags = {"heft.grid": grid_name, "heft.cell": cell.title, "heft.seed": cell.seed,
            "heft.model.key": run.model["key"], "heft.data.key": run.data_key,
            "heft.model": cell.config.model.name, "heft.task": task_name(cell.config), "heft.method": method,
            "valid_accuracy": f"{result.valid_accuracy:.2%}", "heldout_accuracy": f"{result.accuracy:.2%}",
            "heldout_ci95": f"{m['ci95_low']:.2%}-{m['ci95_high']:.2%}",
            "heldout_majority_rate": f"{m['majority_rate']:.2%}",
            "heft.answers": f"always {result.constant}" if result.constant else "varied",
            "heft.run_config": json.dumps(flat_params(cell.config), default=str)}
    description = version_description(cell.config, cell.title, method, result.valid_accuracy,
                                      result.valid_rows, m, result.constant)
    out = register_task(name, run.model["uri"], run.mlflow_run_id, tracking_uri, tags, description,
                        result.valid_accuracy, run.data_key)
    say(f"registered {name} version {out['version']} as {out['alias']}: {cell.run_name}, validation "
        f"{result.valid_accuracy:.2%}, held-out {result.accuracy:.2%} ({out['why']})")
    return {"version": out["version"], "cell": cell.run_name, "alias": out["alias"], "why": out["why"]}


def cancel_children(flow, flow_run, state) -> None:
    """A cancelled grid cancels the cell runs it fanned out (Prefect does not: #12713)."""
    cancel_child_runs(flow_run.id)


def grid_run_name() -> str:
    from prefect.runtime import flow_run
    p = flow_run.parameters
    spec = p.get("spec")
    name = spec.name if spec else p.get("grid", DEFAULT_GRID).rsplit("/", 1)[-1].removesuffix(".yaml")
    return f"grid {name}"


@flow(name="heft-grid", log_prints=True, flow_run_name=grid_run_name, on_cancellation=[cancel_children])
def heft_grid(grid: str = DEFAULT_GRID, overrides: list[str] | None = None, spec: GridSpec | None = None,
              report_dir: str | None = None, mlflow_parent_run_id: str | None = None,
              plans: list[Plan] | None = None, register: str | None = None) -> dict:
    """Run a grid (YAML path + overrides, or a typed ``spec``); returns the report rows.
    A study passes its MLflow run id as ``mlflow_parent_run_id`` so the grid nests under it,
    and the validated ``plans`` of the grid's cells.  ``register``: the name under which the
    cell with the best *validation* accuracy is registered in the MLflow Model Registry."""
    spec = spec or load_grid(grid, overrides or [])
    cells = expand(spec)
    check_engine(spec)  # an unreachable scheduler or a missing deployment fails before any work
    plans = plans or plan_cells(cells)
    grid_plan = GridPlan.of(cells, plans)
    first = cells[0].config
    store = ArtifactStore(first.artifact_root)
    engine = f"deployment {spec.deployment}" if spec.deployment else \
        f"Dask {spec.dask}" if spec.dask else f"{spec.workers} thread worker(s)"
    say(f"grid {spec.name}: {len(cells)} cells, {len(grid_plan.steps)} unique steps, on {engine}")
    study_run = None
    if not mlflow_parent_run_id and (note := close_orphans_note(first.tracking_uri, first.experiment)):
        say(note)
    if mlflow_parent_run_id:
        study_run = Tracker(first.tracking_uri, experiment_id(first.tracking_uri, first.experiment),
                            mlflow_parent_run_id)
    params = {"grid.name": spec.name, "grid.preset": spec.preset, "grid.overrides": " ".join(spec.overrides),
              "grid.axes": repr(dict(spec.axes)), "grid.seeds": repr(sorted({c.seed for c in cells})),
              "grid.epoch_scale": spec.epoch_scale, "grid.cells": len(cells), "grid.workers": spec.workers,
              "grid.engine": engine}
    tags = {"heft.grid": spec.name, "heft.kind": "grid", **source_tags()}
    with Tracker.start(first.tracking_uri, first.experiment, run_name=f"grid: {spec.name}", params=params,
                       parent=study_run, tags=tags) as grid_run:
        grid_run.set_tags({"heft.grid_run": grid_run.run_id})  # its cells carry it too: one view shows all
        started = time.perf_counter()
        if spec.deployment:
            runs = fan_out(grid_plan, store, grid_run, spec)
        else:
            runs = run_cells(grid_plan, store, grid_run, spec)
        seconds = time.perf_counter() - started
        results = [CellResult.of(cell, run) for cell, run in zip(cells, runs)]
        folder = Path(report_dir or f".heft/reports/{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        report = write_report(folder, spec, cells, results)
        best = report["best"]
        grid_run.log_metrics({"wall_seconds": seconds, "cells": len(cells),
                              "steps_built": sum(r.ran for r in results),
                              "steps_reused": sum(r.cached for r in results), **best["metrics"]})
        cell_runs = [run.mlflow_run_id for run in runs if run.mlflow_run_id]
        images = [key for key in ("ablation_plot", "epochs_plot") if key in report["files"]]
        for key in images:  # the dot plots with whiskers, as images the experiment page can chart
            grid_run.log_image(report["files"][key], f"heft_{key}")
        links = grid_links(grid_run, cell_runs, spec, cells, [f"heft_{key}" for key in images])
        note = report["markdown"] + "\n\n" + " · ".join(f"[{text}]({url})" for text, url in links.items())
        grid_run.set_tags({"mlflow.note.content": note, "heft.best_cell": best["label"],
                           "heft.verdict": best["pick"]})
        grid_run.log_files(list(report["files"].values()), artifact_path="report")
        registered = None
        if register:
            registered = register_best(register, cells, results, runs, first.tracking_uri, spec.name)
            what = f"{register} v{registered['version']} ({registered['alias']}): {registered['cell']}"
            grid_run.set_tags({"heft.registered": what})
    key = re.sub(r"[^a-z0-9-]+", "-", f"grid-{spec.name}".lower())
    create_markdown_artifact(key=key, description=f"heft grid {spec.name}: best by validation {best['pick']}",
                             markdown=note)
    kinds = ("mlflow", "mlflow-cells", "mlflow-charts", "mlflow-compare")
    for (text, url), kind in zip(links.items(), kinds):
        create_link_artifact(url, link_text=text, key=f"{kind}-{key}",
                             description=f"{text} of grid {spec.name}")
    print(report["markdown"])  # the Prefect run log keeps the report; the command prints its own table
    print("\n".join(f"{text}: {url}" for text, url in links.items()))
    return {"rows": report["rows"], "seconds": seconds, "report_dir": str(folder),
            "mlflow_run_id": grid_run.run_id, "best": best, "links": links, "registered": registered,
            "cells": [dict(vars(r), stages=[vars(s) for s in run.stages]) for r, run in zip(results, runs)]}


def grid_links(grid_run: Tracker, cell_run_ids: list[str], spec: GridSpec, cells: list[Cell],
               images: list[str] = ()) -> dict[str, str]:
    """MLflow pages of a grid: its run (the report, the verdict), its cells on the experiment page
    sorted by validation accuracy (a saved view: heft/tracking/views.py) and as charts, and the
    compare view of its cells (the params that differ beside heldout_accuracy)."""
    uri, exp = grid_run.uri, grid_run.experiment_id
    key = f"grid-{grid_run.run_id[:12]}"
    axes = ablation_axes(spec)
    epochs = [f"{s}_epochs" for s in ("lora", "reft") if len({c.epochs.get(s, 0) for c in cells}) > 1]
    state = views.grid_view(grid_run.run_id, [a for a in axes if a not in ("lora.epochs", "reft.epochs")],
                            epochs, [*all_names()["pipeline"], *all_names()["grid"]], images)
    save_view(uri, exp, key, f"heft: grid {spec.name}", state)
    return {"MLflow grid run": ui_url(uri, exp, grid_run.run_id),
            "MLflow cells by validation accuracy": view_url(uri, exp, key),
            "MLflow charts of the cells": view_url(uri, exp, key, charts=True),
            "MLflow compare view of the cells": compare_url(uri, exp, cell_run_ids)}


if __name__ == "__main__":
    heft_grid()
