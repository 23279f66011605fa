"""Benchmark: a fully cached pipeline rerun vs. its first run, as the user runs it.

    .venv/bin/python bench/cached_rerun.py                      # embedded default, plain (~12 min)
    make up && source .heft/stack/env && .venv/bin/python bench/cached_rerun.py   # against the stack

Each run is the user's command, ``heft run --preset ...`` in a fresh process, timed from
spawn to exit (process start, imports, Prefect's temporary server where there is no
PREFECT_API_URL, validation, MLflow runs).  The first run gets a new artifact folder under
$HEFT_ARTIFACT_ROOT (default .heft/bench), so it builds every stage; the reruns must then
report every stage task ``Cached`` (checked from the flow's own summary lines) or the
benchmark stops.  Printed: the first run, each rerun, and median rerun / first run.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEFT = [sys.executable, "-m", "flows"]


def timed_run(preset: str, overrides: list[str]) -> tuple[float, list[str]]:
    """(wall seconds, the state of each stage task) of one `heft run` in a new process."""
    start = time.perf_counter()
    proc = subprocess.run([*HEFT, "run", "--preset", preset, *overrides], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"heft run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    # the flow prints one line per stage: "<stage> <key> <state> (reused|ran)"
    states = re.findall(r"\b(?:data|base|lora|merge|reft|evaluate) [0-9a-f]{20} (\w+) \((?:reused|ran)\)",
                        proc.stdout + proc.stderr)
    return wall, states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="deployments/minilm-boolq.yaml")
    ap.add_argument("--reruns", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="dotted run overrides, e.g. lora.epochs=1")
    args = ap.parse_args()
    base = os.environ.get("HEFT_ARTIFACT_ROOT", ".heft/bench").rstrip("/")
    overrides = [f"artifact_root={base}/cached-rerun-{time.strftime('%Y%m%d-%H%M%S')}", *args.overrides]
    env = "stack" if os.environ.get("PREFECT_API_URL") else "temporary Prefect server"
    print(f"{args.preset} {' '.join(overrides)} ({env}, MLflow {os.environ.get('MLFLOW_TRACKING_URI', 'default')})")
    first, states = timed_run(args.preset, overrides)
    print(f"first run: {first:.1f} s, stage tasks {states}")
    walls = []
    for i in range(args.reruns):
        wall, states = timed_run(args.preset, overrides)
        if not states or any(s != "Cached" for s in states):
            sys.exit(f"rerun {i + 1} was not fully cached: {states}")
        walls.append(wall)
        print(f"rerun {i + 1}: {wall:.2f} s, {len(states)}/{len(states)} stage tasks Cached")
    median = statistics.median(walls)
    print(f"median rerun {median:.2f} s = {median / first:.2%} of the first run "
          f"(min {min(walls):.2f} s = {min(walls) / first:.2%})")


if __name__ == "__main__":
    main()
