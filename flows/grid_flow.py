"""Flow ``heft-grid``: a grid as one DAG of unique steps on a task runner, then one report.

The cells are planned and validated once; their steps are de-duplicated by key
(heft/study/grid_plan.py), so a ReFT-layer sweep trains LoRA once, and each unique step is
submitted once with its parent's future as its input: independent branches run at the same
time on ``workers`` threads or Dask workers (flows/grid_engines.py).  With ``deployment`` the
cells are fanned out to a work pool instead (flows/grid_fanout.py).  Each cell keeps its own
MLflow run (nested under the grid's) and its model.  Grid presets: deployments/grids/*.yaml.
"""
from __future__ import annotations

import json
import re
import time
from contextlib import ExitStack
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.grid_engines import check_engine, grid_steps, task_runner, threads_per_worker
from heft.config import ConfigError, flat_params
from flows.heft_flow import publish_summary
from heft.pipeline import REBUILDS, summary
from heft.plan import Plan, plan
from heft.store.damage import DamagedArtifact
from heft.store.artifacts import ArtifactStore
from heft.store.fingerprints import Fingerprints
from heft.study.grid import Cell, GridSpec, expand, load_grid
from heft.study.grid_plan import GridPlan
from heft.study.grid_report import CellResult, champion, write_report
from heft.tracking import Tracker, experiment_id, stage_params
from heft.tracking.client import compare_url, ui_url
from heft.tracking.context import source_tags
from heft.validate import validate
from tasks.models import register_task
from tasks.pipeline_run import PipelineRun
from tasks.stages import link_builder

DEFAULT_GRID = "deployments/grids/reft-layers.yaml"


def cell_tags(cell: Cell, grid_name: str) -> dict[str, str]:
    return {"heft.grid": grid_name, "heft.cell": cell.label, "heft.method": cell.method,
            "heft.seed": str(cell.seed)}


def run_cells(grid: GridPlan, store: ArtifactStore, grid_run: Tracker, spec: GridSpec) -> list[dict]:
    """Every unique step once on the spec's task runner; then each cell's MLflow run gets its
    results and model.  A step a cell shares with an earlier cell counts as reused there."""
    built_before = [k for k, s in grid.steps.items() if store.find(s.stage, k) is not None]
    with ExitStack() as stack:
        pipelines = [stack.enter_context(PipelineRun.start(p, store, grid_run, c.run_name,
                                                           cell_tags(c, spec.name)))
                     for c, p in zip(grid.cells, grid.plans)]
        live = not spec.dask or grid.plans[0].config.tracking_uri.startswith(("http://", "https://"))
        threads = None if spec.dask else threads_per_worker(spec.workers)
        built = built_before
        for attempt in range(REBUILDS + 1):
            runs = {k: pipelines[grid.users[k][0]].run.child(s.label, stage_params(s.stage, s.config))
                    for k, s in grid.steps.items() if k not in built}  # only what will be built gets a run
            steps = grid_steps.with_options(task_runner=task_runner(spec),
                                            flow_run_name=f"{spec.name}: steps")
            try:
                done = steps(list(grid.steps.values()), store.root, built, runs, live, bool(spec.dask),
                             threads)
                break
            except DamagedArtifact as e:  # set aside: planning the grid again rebuilds it
                for run in runs.values():
                    run.finish("FAILED")
                if attempt == REBUILDS:
                    raise
                print(f"{e}: running the grid's steps again")
                built = [k for k, s in grid.steps.items() if store.find(s.stage, k) is not None]
        out = []
        for i, (cell, planned, pipeline) in enumerate(zip(grid.cells, grid.plans, pipelines)):
            rows = []
            for step in planned.steps:
                first = grid.users[step.key][0] == i and step.key not in built_before
                rows.append({"stage": step.stage, "key": step.key,
                             "state": done[step.key][1] if first else "Cached",
                             "cache": "ran" if first else "reused"})
                if not first:
                    link_builder(pipeline.run, step, done[step.key][0])
            artifacts = {s.name: done[s.key][0] for s in planned.steps}
            finished = pipeline.finish_with(artifacts)
            publish_summary(planned, rows, summary(artifacts), pipeline.run, finished["model"])
            out.append({"results": finished["results"], "stages": rows, "mlflow_run_id": pipeline.run.run_id,
                        "model": finished["model"], "validation_accuracy": finished["validation_accuracy"],
                        "seconds": built_seconds(planned, done, rows)})
    return out


def built_seconds(planned: Plan, done: dict, rows: list[dict]) -> float:
    """Wall seconds of the steps this cell built (from their meta.json build times)."""
    total = 0.0
    for step, row in zip(planned.steps, rows):
        build = done[step.key][0].meta.get("build", {})
        if row["cache"] == "ran" and "started" in build:
            total += build["finished"] - build["started"]
    return total


def register_best(name: str, cells: list[Cell], results: list[CellResult], runs: list[dict],
                  tracking_uri: str, grid_name: str) -> dict:
    """Register the cell with the best validation accuracy.  Never the best held-out accuracy:
    choosing on the held-out rows would make the reported held-out number optimistic."""
    best = champion([r.valid_accuracy for r in results])  # ties: the first cell
    if best is None:
        raise ConfigError(f"--register {name}: no cell of grid {grid_name!r} trained a model with a "
                          "validation accuracy (data.valid_size=0, or untrained cells only)")
    cell, result, run = cells[best], results[best], runs[best]
    tags = {"heft.grid": grid_name, "heft.cell": cell.label, "heft.seed": cell.seed,
            "heft.model.key": run["model"]["key"], "valid_accuracy": result.valid_accuracy,
            "heldout_accuracy": result.accuracy, "config": json.dumps(flat_params(cell.config), default=str)}
    source_run = run["model"]["uri"].removeprefix("runs:/").split("/")[0]
    version = register_task(name, source_run, tracking_uri, tags)
    print(f"registered {name} version {version} (alias champion): {cell.run_name}, validation accuracy "
          f"{result.valid_accuracy:.2%}, held-out {result.accuracy:.2%}")
    return {"version": version, "cell": cell.run_name}


def plan_cells(cells: list[Cell], fingerprints: Fingerprints | None = None) -> list[Plan]:
    """Plan every cell (each source read once) and validate each distinct plan once, before
    any cell trains; one MLflow store for the grid."""
    if not cells:
        raise ConfigError("the grid has no cells")
    stores = {(c.config.tracking_uri, c.config.experiment) for c in cells}
    if len(stores) > 1:
        raise ConfigError(f"a grid logs to one MLflow experiment, the cells name {sorted(stores)}")
    roots = {ArtifactStore(c.config.artifact_root).root for c in cells}
    if len(roots) > 1:
        raise ConfigError(f"a grid keeps its artifacts under one root, the cells name {sorted(roots)}")
    fingerprints = fingerprints or Fingerprints()
    plans, checked = [], set()
    for cell in cells:
        try:
            plans.append(plan(cell.config, fingerprints))
            if (identity := tuple(s.key for s in plans[-1].steps)) not in checked:
                validate(plans[-1])
                checked.add(identity)
        except ConfigError as e:
            raise ConfigError(f"grid cell {cell.label!r}: {e}") from None
    return plans


def cancel_children(flow, flow_run, state) -> None:
    """A cancelled grid cancels the cell runs it fanned out (Prefect does not: #12713)."""
    from flows.grid_fanout import cancel_child_runs
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
    print(f"grid {spec.name}: {len(cells)} cells, {len(grid_plan.steps)} unique steps, on {engine}")
    study_run = None
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
        started = time.perf_counter()
        if spec.deployment:
            from flows.grid_fanout import fan_out
            runs = fan_out(grid_plan, store, grid_run, spec)
        else:
            runs = run_cells(grid_plan, store, grid_run, spec)
        seconds = time.perf_counter() - started
        results = [CellResult.of(cell, run, run["seconds"]) for cell, run in zip(cells, runs)]
        for i, (cell, r) in enumerate(zip(cells, results), 1):
            print(f"[{i}/{len(cells)}] {cell.run_name}: held-out {r.accuracy:.2%} "
                  f"(steps ran {r.ran}, reused {r.cached})")
        folder = Path(report_dir or f".heft/reports/{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        report = write_report(folder, spec, cells, results)
        best = report["best"]
        grid_run.log_metrics({"wall_seconds": seconds, "cells": len(cells),
                              "steps_built": sum(r.ran for r in results),
                              "steps_reused": sum(r.cached for r in results), **best["metrics"]})
        links = grid_links(grid_run, [run["mlflow_run_id"] for run in runs if run["mlflow_run_id"]])
        note = report["markdown"] + "\n\n" + " · ".join(f"[{text}]({url})" for text, url in links.items())
        grid_run.set_tags({"mlflow.note.content": note, "heft.best_cell": best["label"]})
        grid_run.log_files(list(report["files"].values()), artifact_path="report")
        if register:
            registered = register_best(register, cells, results, runs, first.tracking_uri, spec.name)
            what = f"{register} v{registered['version']}: {registered['cell']}"
            grid_run.set_tags({"heft.registered": what})
    key = re.sub(r"[^a-z0-9-]+", "-", f"grid-{spec.name}".lower())
    create_markdown_artifact(key=key, description=f"heft grid {spec.name}", markdown=note)
    for (text, url), kind in zip(links.items(), ("mlflow", "mlflow-compare")):
        create_link_artifact(url, link_text=text, key=f"{kind}-{key}",
                             description=f"{text} of grid {spec.name}")
    print(report["markdown"])
    print("\n".join(f"{text}: {url}" for text, url in links.items()))
    return {"rows": report["rows"], "seconds": seconds, "report_dir": str(folder),
            "mlflow_run_id": grid_run.run_id, "best": best,
            "cells": [dict(vars(r), stages=run["stages"]) for r, run in zip(results, runs)]}


def grid_links(grid_run: Tracker, cell_run_ids: list[str]) -> dict[str, str]:
    """MLflow pages of a grid: its run (the report, the best cell) and the compare view of its
    cells (the params that differ, heldout_accuracy plotted against them)."""
    uri, exp = grid_run.uri, grid_run.experiment_id
    return {"MLflow grid run": ui_url(uri, exp, grid_run.run_id),
            "MLflow compare view of the cells": compare_url(uri, exp, cell_run_ids)}


if __name__ == "__main__":
    heft_grid()
