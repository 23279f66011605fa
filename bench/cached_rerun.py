"""Benchmark: a fully cached pipeline rerun vs. its first run, as the user runs it.

    .venv/bin/python bench/cached_rerun.py                      # embedded default, plain (~12 min)
    make up && source .heft/stack/env && .venv/bin/python bench/cached_rerun.py   # against the stack
    .venv/bin/python bench/cached_rerun.py --root .heft/bench/cached-rerun-X --compare-server

Each run is the user's command, ``heft run --preset ...`` in a fresh process, timed from
spawn to exit (process start, imports, Prefect's temporary server where there is no
PREFECT_API_URL, validation, MLflow runs).  The first run gets a new artifact folder under
$HEFT_ARTIFACT_ROOT (default .heft/bench), so it builds every stage; the reruns must then
report every stage task ``Cached`` (checked from the flow's own summary lines) or the
benchmark stops.  Printed: the first run, each rerun, and median rerun / first run.

``--root`` reruns on an artifact folder a first run already filled (no first run, no ratio
to it).  ``--compare-server`` alternates reruns with heft's temporary-server start
(flows/prefect_server.py) and Prefect's own (HEFT_TEMPORARY_SERVER=prefect), one pair at a
time so both see the same machine, and prints the medians and their ratio.
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


def timed_run(preset: str, overrides: list[str], env: dict | None = None) -> tuple[float, list[str]]:
    """(wall seconds, the state of each stage task) of one `heft run` in a new process."""
    start = time.perf_counter()
    proc = subprocess.run([*HEFT, "run", "--preset", preset, *overrides], cwd=ROOT,
                          capture_output=True, text=True, env=env)
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
    ap.add_argument("--root", default=None, help="an artifact folder a first run already filled")
    ap.add_argument("--compare-server", action="store_true",
                    help="alternate heft's and Prefect's own temporary-server start")
    ap.add_argument("overrides", nargs="*", help="dotted run overrides, e.g. lora.epochs=1")
    args = ap.parse_args()
    base = os.environ.get("HEFT_ARTIFACT_ROOT", ".heft/bench").rstrip("/")
    root = args.root or f"{base}/cached-rerun-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [f"artifact_root={root}", *args.overrides]
    env = "stack" if os.environ.get("PREFECT_API_URL") else "temporary Prefect server"
    print(f"{args.preset} {' '.join(overrides)} "
          f"({env}, MLflow {os.environ.get('MLFLOW_TRACKING_URI', 'default')})")
    first = None
    if not args.root:
        first, states = timed_run(args.preset, overrides)
        print(f"first run: {first:.1f} s, stage tasks {states}")
    starts = {"heft": None}  # run environment per server start (None: this one)
    if args.compare_server:
        starts["prefect"] = {**os.environ, "HEFT_TEMPORARY_SERVER": "prefect"}
    walls: dict[str, list[float]] = {name: [] for name in starts}
    for i in range(args.reruns):
        for name, run_env in starts.items():
            wall, states = timed_run(args.preset, overrides, run_env)
            if not states or any(s != "Cached" for s in states):
                sys.exit(f"rerun {i + 1} ({name} server start) was not fully cached: {states}")
            walls[name].append(wall)
            print(f"rerun {i + 1}, {name} server start: {wall:.2f} s, "
                  f"{len(states)}/{len(states)} stage tasks Cached")
    for name, w in walls.items():
        median = statistics.median(w)
        vs_first = f" = {median / first:.2%} of the first run (min {min(w) / first:.2%})" if first else ""
        print(f"median rerun, {name} server start: {median:.2f} s{vs_first}")
    if args.compare_server:
        pairs = [p / h for h, p in zip(walls["heft"], walls["prefect"])]
        print(f"Prefect's own start / heft's: {statistics.median(pairs):.2f}x "
              f"(median of {len(pairs)} paired ratios)")


if __name__ == "__main__":
    main()
