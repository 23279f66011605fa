"""Flow ``heft-grid``: every cell of a grid as a ``heft`` subflow, then one report.

Cells run one after another; the per-stage task cache makes them share work (a ReFT
layer sweep trains LoRA once).  ``run_cell`` is the only place a cell is executed: to
fan cells out to a work pool, replace its body with
``prefect.deployments.run_deployment("heft/boolq", parameters={...})`` (or submit it to a
task runner); nothing in heft/ changes.  Grid presets: deployments/grids/*.yaml.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.heft_flow import heft
from heft.config import ConfigError, flat_params
from heft.plan import Plan, plan
from heft.store.fingerprints import Fingerprints
from heft.study.grid import Cell, GridSpec, expand, load_grid
from heft.study.grid_report import CellResult, write_report
from heft.tracking import Tracker, experiment_id
from heft.validate import validate
from tasks.models import register_task

DEFAULT_GRID = "deployments/grids/reft-layers.yaml"


def run_cell(cell: Cell, planned: Plan, grid_run: Tracker, grid_name: str) -> dict:
    """One cell = one ``heft`` flow run, nested under the grid in Prefect and in MLflow."""
    return heft.with_options(flow_run_name=f"{grid_name}: {cell.run_name}")(
        planned=planned, mlflow_parent_run_id=grid_run.run_id, run_name=cell.run_name,
        mlflow_tags={"heft.grid": grid_name, "heft.cell": cell.label, "heft.method": cell.method,
                     "heft.seed": str(cell.seed)})


def register_best(name: str, cells: list[Cell], results: list[CellResult], runs: list[dict],
                  tracking_uri: str, grid_name: str) -> dict:
    """Register the cell with the best validation accuracy.  Never the best held-out accuracy:
    choosing on the held-out rows would make the reported held-out number optimistic."""
    scored = [i for i, r in enumerate(results) if r.valid_accuracy is not None]
    if not scored:
        raise ConfigError(f"--register {name}: no cell of grid {grid_name!r} trained a model with a "
                          "validation accuracy (data.valid_size=0, or untrained cells only)")
    best = max(scored, key=lambda i: (results[i].valid_accuracy, -i))  # ties: the first cell
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


@flow(name="heft-grid", log_prints=True)
def heft_grid(grid: str = DEFAULT_GRID, overrides: list[str] | None = None, spec: GridSpec | None = None,
              report_dir: str | None = None, mlflow_parent_run_id: str | None = None,
              plans: list[Plan] | None = None, register: str | None = None) -> dict:
    """Run a grid (YAML path + overrides, or a typed ``spec``); returns the report rows.
    A study passes its MLflow run id as ``mlflow_parent_run_id`` so the grid nests under it,
    and the validated ``plans`` of the grid's cells.  ``register``: the name under which the
    cell with the best *validation* accuracy is registered in the MLflow Model Registry."""
    spec = spec or load_grid(grid, overrides or [])
    cells = expand(spec)
    plans = plans or plan_cells(cells)
    print(f"grid {spec.name}: {len(cells)} cells")
    first = cells[0].config
    study_run = None
    if mlflow_parent_run_id:
        study_run = Tracker(first.tracking_uri, experiment_id(first.tracking_uri, first.experiment),
                            mlflow_parent_run_id)
    params = {"grid.name": spec.name, "grid.preset": spec.preset, "grid.overrides": " ".join(spec.overrides),
              "grid.axes": repr(dict(spec.axes)), "grid.seeds": repr(list(spec.seeds)),
              "grid.epoch_scale": spec.epoch_scale, "grid.cells": len(cells)}
    with Tracker.start(first.tracking_uri, first.experiment, run_name=f"grid: {spec.name}", params=params,
                       parent=study_run, tags={"heft.grid": spec.name, "heft.kind": "grid"}) as grid_run:
        results, stages, runs, started = [], [], [], time.perf_counter()
        for i, (cell, planned) in enumerate(zip(cells, plans), 1):
            t0 = time.perf_counter()
            run = run_cell(cell, planned, grid_run, spec.name)
            runs.append(run)
            results.append(CellResult.of(cell, run, time.perf_counter() - t0))
            stages.append(run["stages"])
            r = results[-1]
            print(f"[{i}/{len(cells)}] {cell.run_name}: {r.accuracy:.2%} "
                  f"(stages ran {r.ran}, cached {r.cached}, {r.seconds:.0f} s)")
        seconds = time.perf_counter() - started
        folder = Path(report_dir or f".heft/reports/{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        report = write_report(folder, spec, cells, results)
        grid_run.log_metrics({"wall_seconds": seconds, "cells": len(cells),
                              "stages_ran": sum(r.ran for r in results),
                              "stages_cached": sum(r.cached for r in results),
                              "best_accuracy": max(r["mean"] for r in report["rows"])})
        grid_run.log_files(list(report["files"].values()), artifact_path="report")
        if register:
            registered = register_best(register, cells, results, runs, first.tracking_uri, spec.name)
            what = f"{register} v{registered['version']}: {registered['cell']}"
            grid_run.set_tags({"heft.registered": what})
    create_markdown_artifact(key=re.sub(r"[^a-z0-9-]+", "-", f"grid-{spec.name}".lower()),
                             description=f"heft grid {spec.name}", markdown=report["markdown"])
    print(report["markdown"])
    return {"rows": report["rows"], "seconds": seconds, "report_dir": str(folder),
            "mlflow_run_id": grid_run.run_id,
            "cells": [dict(vars(r), stages=st) for r, st in zip(results, stages)]}


if __name__ == "__main__":
    heft_grid()
