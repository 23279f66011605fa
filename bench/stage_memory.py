"""Benchmark: where a run's memory goes, stage by stage, in one process (as the flow runs them).

    .venv/bin/python bench/stage_memory.py                      # MiniLM default, 200 rows, ~4 min
    .venv/bin/python bench/stage_memory.py --preset deployments/minilm-boolq.yaml data.max_train=400

The plan's steps run one after another in this process, as flow ``heft`` runs them (without
Prefect and MLflow, which bench/stage_profile.py and ``/usr/bin/time -v heft run`` cover).  For
each step: the resident memory before it, the peak while it ran (sampled every 20 ms) and after
it.  Memory a stage does not give back shows as a rising "after"; a stage's own need is its peak
above its "before".  The last line is the process's peak (``ru_maxrss``, what ``/usr/bin/time -v``
reports).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import PeakRSS, rss_mb  # noqa: E402

from heft.plan import plan  # noqa: E402
from heft.presets import load_run_config  # noqa: E402
from heft.stages import run_step  # noqa: E402
from heft.store.artifacts import ArtifactStore  # noqa: E402

DEFAULT = ["data.max_train=200", "data.valid_size=50", "data.max_eval=200", "lora.epochs=1", "reft.epochs=1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="deployments/minilm-boolq.yaml")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="heft-memory-")
    overrides = args.overrides or DEFAULT
    cfg = load_run_config(args.preset, [f"artifact_root={work}/art", *overrides])
    store, done = ArtifactStore(cfg.artifact_root), {}
    print(f"{args.preset} {' '.join(overrides)}")
    print("| step | s | RSS before MB | peak MB | RSS after MB |\n|---|---|---|---|---|")
    for step in plan(cfg).steps:
        before, start = rss_mb(), time.perf_counter()
        with PeakRSS() as rss:
            done[step.key] = run_step(step, done.get(step.parent_key), store)
        print(f"| {step.label} | {time.perf_counter() - start:.1f} | {before:.0f} | {rss.peak_mb:.0f} | "
              f"{rss_mb():.0f} |", flush=True)
    print(f"process peak (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
