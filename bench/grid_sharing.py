"""Benchmark: what per-stage caching saves in a grid, measured side by side in one process.

    .venv/bin/python bench/grid_sharing.py                       # the embedded default (~55 min on 2 cores)
    .venv/bin/python bench/grid_sharing.py --grid deployments/grids/reft-layers.yaml \\
        preset=deployments/stories-boolq.yaml data.max_train=200  # a quick look (~1 min)

1. the grid (default: the 3-layer ReFT sweep) on a fresh artifact root;
2. the same grid again (every stage should come back Cached);
3. the grid's cells as independent pipelines, each on its own fresh root (no sharing).
Prints wall times, the ratio grid / independent, the cached-rerun ratio, and the Prefect
state of each stage per cell.  Everything runs against one temporary Prefect server and
a throw-away MLflow store under --work.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="deployments/grids/reft-layers.yaml")
    parser.add_argument("--work", default="", help="folder for roots and stores (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="grid fields or run-config overrides, as `heft grid`")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="heft-bench-grid-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)

    from flows.grid_flow import heft_grid
    from flows.heft_flow import heft
    from heft.grids.spec import expand, load_grid

    store = [f"artifact_root={work}/grid-root", f"tracking_uri=sqlite:///{work}/mlflow.db"]
    spec = load_grid(args.grid, list(args.overrides) + store)
    cells = expand(spec)
    print(f"grid {spec.name}: {len(cells)} cells on {cells[0].config.model.name}; work dir {work}",
          flush=True)

    from prefect import flow
    flow(name="bench-warmup")(lambda: None)()  # start the temporary Prefect server before timing
    t0 = time.perf_counter()
    first = heft_grid(spec=spec, report_dir=str(work / "report-1"))
    t_grid = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = heft_grid(spec=spec, report_dir=str(work / "report-2"))
    t_rerun = time.perf_counter() - t0
    t_independent = []
    for i, cell in enumerate(cells):
        cfg = dataclasses.replace(cell.config, artifact_root=f"{work}/independent-{i}")
        t0 = time.perf_counter()
        heft(cfg)
        t_independent.append(time.perf_counter() - t0)

    print("\n=== per-cell Prefect stage states (first grid run) ===")
    for c in first["cells"]:
        states = " ".join(f"{s['stage']}:{s['state']}" for s in c["stages"] if s["stage"] != "base")
        print(f"{c['label']:<28} {states}")
    cached_again = sum(s["state"] == "Cached" for c in again["cells"] for s in c["stages"])
    total_again = sum(len(c["stages"]) for c in again["cells"])
    print("\n=== wall time ===")
    print(f"grid, first run           {t_grid:8.1f} s")
    print(f"grid, rerun               {t_rerun:8.1f} s   ({cached_again}/{total_again} stage tasks Cached)")
    print(f"{len(cells)} independent pipelines  {sum(t_independent):8.1f} s   "
          f"({', '.join(f'{t:.0f}' for t in t_independent)})")
    print(f"ratio grid / independent  {t_grid / sum(t_independent):8.3f}")
    print(f"ratio rerun / first grid  {t_rerun / t_grid:8.3f}")
    print("accuracies (grid vs independent are the same configs):",
          ", ".join(f"{r['label']}: {r['mean']:.2%}" for r in first["rows"]))


if __name__ == "__main__":
    main()
