"""Benchmark: a grid's DAG on 1 worker against 2 workers, side by side, against the plan's ideal.

    OMP_NUM_THREADS=1 TQDM_DISABLE=1 .venv/bin/python bench/grid_parallel.py   # stories ablation, ~6 min
    .venv/bin/python bench/grid_parallel.py --paper-only                      # the predicted table only

1. The stories260K ReFT layer x dim ablation (deployments/grids/ablation.yaml: 9 cells, one shared
   LoRA + merge, 9 ReFT branches) on the keyword task, run as flow heft-grid with workers=1 and
   with dask=local workers=2 (two worker processes, one GPU resource each, one torch thread each),
   each on a fresh artifact root, alternating ``--reps`` times.  Printed: the wall-time ratio,
   and measured / ideal, where the ideal 2-worker time is the plan's list-scheduling bound
   computed from the *measured* durations of the sequential run's steps (meta.json build times).
2. On paper: the predicted wall time of the MiniLM ablation grid (9 cells, the paper's 3+3
   epochs, the embedded preset's data) on 1, 2, 4, 8 and 16 workers, from the per-row stage
   costs in heft/grids/plan.py (measured on this machine), and its critical path.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"


def keyword_file(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import random
    rng = random.Random(0)
    subjects = ["the cat", "a dog", "the king", "my friend", "the river", "a bird", "the sun", "her mom"]
    rows = [{"question": f"is {rng.choice(subjects)} {'happy' if i % 2 == 0 else 'sad'} today",
             "passage": f"A short story, number {i}.", "label": i % 2 == 0} for i in range(600)]
    path = folder / "keyword.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_grid(work: Path, name: str, data: Path, extra: list[str]) -> dict:
    from flows.grid_flow import heft_grid
    from heft.grids.spec import load_grid
    overrides = ["preset=deployments/stories-boolq.yaml", "model.max_length=64", f"data.source={data}",
                 "data.holdout_size=100", "data.valid_size=60", "data.max_train=400", "lora.epochs=2",
                 "reft.epochs=3", "lora.lr=3e-3", "reft.lr=1e-2", f"artifact_root={work}/{name}",
                 f"tracking_uri=sqlite:///{work}/mlflow.db", *extra]
    spec = load_grid("deployments/grids/ablation.yaml", overrides)
    t0 = time.perf_counter()
    out = heft_grid(spec=spec, report_dir=str(work / f"report-{name}"))
    return {"seconds": time.perf_counter() - t0, "out": out, "root": f"{work}/{name}", "spec": spec}


def measured_costs(root: str, spec) -> tuple[object, dict]:
    """The grid plan and each step's measured build seconds (from its meta.json)."""
    from heft.grids.plan import plan_cells
    from heft.store.artifacts import ArtifactStore
    from heft.grids.spec import expand
    from heft.grids.plan import GridPlan
    cells = expand(spec)
    grid = GridPlan.of(cells, plan_cells(cells))
    store = ArtifactStore(root)
    costs = {}
    for key, step in grid.steps.items():
        b = store.find(step.stage, key).meta["build"]
        costs[key] = b["finished"] - b["started"]
    return grid, costs


def paper_table() -> None:
    from heft.grids.plan import plan_cells
    from heft.data.sources import split_rows
    from heft.grids.spec import expand, load_grid
    from heft.grids.plan import GridPlan
    cells = expand(load_grid("deployments/grids/ablation.yaml", ["lora.epochs=3", "reft.epochs=3"]))
    grid = GridPlan.of(cells, plan_cells(cells))
    dataset = grid.plans[0]["data"].config
    rows, _ = split_rows(dataset.data, dataset.task)
    costs = grid.costs({k: len(v) for k, v in rows.items()})
    seconds, path = grid.critical_path(costs)
    print(f"\nMiniLM ablation on paper: {len(cells)} cells, {len(grid.steps)} unique steps, "
          f"{sum(costs.values()) / 3600:.2f} h of work; critical path {seconds / 3600:.2f} h "
          f"({' -> '.join(s.label for s in path)})")
    print("| workers | predicted wall (h) | speed-up |\n|---|---|---|")
    one = grid.simulate(costs, 1)
    for w in (1, 2, 4, 8, 16):
        wall = grid.simulate(costs, w)
        print(f"| {w} | {wall / 3600:.2f} | {one / wall:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--paper-only", action="store_true")
    args = ap.parse_args()
    if not args.paper_only:
        from prefect.testing.utilities import prefect_test_harness
        work = Path(tempfile.mkdtemp(prefix="heft-grid-parallel-"))
        data = keyword_file(work)
        seq, par = [], []
        with prefect_test_harness(server_startup_timeout=120):
            for rep in range(args.reps):
                seq.append(run_grid(work, f"seq{rep}", data, []))
                par.append(run_grid(work, f"par{rep}", data, ["dask=local", "workers=2"]))
                print(f"rep {rep}: 1 worker {seq[-1]['seconds']:.1f} s, 2 workers {par[-1]['seconds']:.1f} s")
        grid, costs = measured_costs(seq[0]["root"], seq[0]["spec"])
        ideal1, ideal2 = grid.simulate(costs, 1), grid.simulate(costs, 2)
        s, p = statistics.median(r["seconds"] for r in seq), statistics.median(r["seconds"] for r in par)
        print("\n| | wall (s) | ideal from the plan (s) | measured / ideal |\n|---|---|---|---|")
        print(f"| 1 worker (threads) | {s:.1f} | {ideal1:.1f} | {s / ideal1:.2f} |")
        print(f"| 2 Dask workers | {p:.1f} | {ideal2:.1f} | {p / ideal2:.2f} |")
        print(f"2 workers / 1 worker: {p / s:.2f} (ideal {ideal2 / ideal1:.2f}); steps built {len(costs)}, "
              f"critical path {grid.critical_path(costs)[0]:.1f} s")
        def accuracies(run):
            return [c["accuracy"] for c in run["out"]["cells"]]
        same = accuracies(seq[0]) == accuracies(par[0])
        print(f"cell accuracies equal between the two: {same}")
    paper_table()


if __name__ == "__main__":
    main()
