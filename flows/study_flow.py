"""Flow ``heft-study``: the grids of a study, nested under one MLflow parent run, then
docs/results.md with its plots and diagnostics (study/assemble.py).

Every grid's cells are validated before the first one trains.  Grids share the artifact
store, so a rerun of a finished study retrains nothing and only rebuilds the document.
Study specs: deployments/study/*.yaml (``make results`` runs the MiniLM one).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.grid_flow import heft_grid
from heft.grids.plan import plan_cells
from heft.config import ConfigError
from heft.fingerprints import Fingerprints
from study import assemble
from study.derived import write_derived_task
from heft.grids.spec import expand
from study.spec import load_study
from heft.tracking import Tracker
from heft.tracking.orphans import close_orphans_note

DEFAULT_STUDY = "deployments/study/minilm.yaml"


@flow(name="heft-study", log_prints=True)
def heft_study(study: str = DEFAULT_STUDY, overrides: list[str] | None = None,
               results: str | None = None) -> dict:
    """Run a study (its grids, in order) and write its results document; ``overrides`` are
    grid fields or run overrides added to every grid (after the study's own)."""
    spec = load_study(study)
    for d in spec.derived:  # before validation: the derived grids read these files
        path = write_derived_task(d["task"], d["source"], d["out"], int(d.get("seed", 0)))
        print(f"derived task {d['task']}: {path}")
    grids = spec.grid_specs(overrides or [])
    cells = {g.name: expand(g) for g in grids}
    fingerprints, plans = Fingerprints(), {}
    for name, cs in cells.items():  # every cell planned and validated once, before any trains
        try:
            plans[name] = plan_cells(cs, fingerprints)
        except ConfigError as e:
            raise ConfigError(f"study {spec.name!r}, grid {name!r}: {e}") from None
    first = next(iter(cells.values()))[0].config
    stores = {(c.config.tracking_uri, c.config.experiment) for cs in cells.values() for c in cs}
    if len(stores) > 1:
        raise ConfigError(f"a study logs to one MLflow experiment, its grids name {sorted(stores)}")
    print(f"study {spec.name}: {len(grids)} grids, {sum(map(len, cells.values()))} cells")
    if note := close_orphans_note(first.tracking_uri, first.experiment):
        print(note)
    params = {"study.name": spec.name, "study.grids": " ".join(spec.grids),
              "study.overrides": " ".join(list(spec.overrides) + list(overrides or []))}
    with Tracker.start(first.tracking_uri, first.experiment, run_name=f"study: {spec.name}", params=params,
                       tags={"heft.kind": "study", "heft.study": spec.name}) as run:
        started, run_ids = time.perf_counter(), {}
        for g in grids:
            out = heft_grid(spec=g, mlflow_parent_run_id=run.run_id, plans=plans[g.name],
                            report_dir=str(Path(".heft/reports") / f"{spec.name}-{g.name}"))
            run_ids[g.name] = {c.run_name: r["run_id"] for c, r in zip(cells[g.name], out["cells"])}
        wall = time.perf_counter() - started
        args = " ".join(overrides or [])
        make = f"make results STUDY={study}" + (f' ARGS="{args}"' if args else "")
        heft = f"heft study --study {study}{' ' + args if args else ''}"
        commands = [line.format(make=make, heft=heft) for line in spec.reproduce]
        report = assemble.write_results(spec, grids, run_ids, results or spec.results, wall, commands)
        run.log_metrics(report["metrics"] | {"wall_seconds": wall})
        for run_id, metrics in report["cell_metrics"].items():
            Tracker(run.uri, run.experiment_id, run_id).log_metrics(metrics)
        run.log_files(list(report["files"].values()), artifact_path="results")
    create_markdown_artifact(key=re.sub(r"[^a-z0-9-]+", "-", f"study-{spec.name}".lower()),
                             description=f"heft study {spec.name}", markdown=report["markdown"])
    return {"results": str(report["files"]["results"]), "mlflow_run_id": run.run_id, "seconds": wall,
            "metrics": report["metrics"]}


if __name__ == "__main__":
    heft_study()
