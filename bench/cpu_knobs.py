"""Benchmark: the CPU knobs: torch threads, gradient checkpointing, tokenization cost.

    TQDM_DISABLE=1 .venv/bin/python bench/cpu_knobs.py             # MiniLM, 160 BoolQ rows, ~6 min
    TQDM_DISABLE=1 .venv/bin/python bench/cpu_knobs.py --rows 320 --reps 3

All on the LoRA stage of the embedded default (the bare loop of bench/lora_overhead.py,
heft's length-grouped batches), because it is the most expensive stage:

1. threads: one epoch with ``torch.set_num_threads(n)`` for n = 1 .. cores, alternating;
2. gradient checkpointing (``lora.gradient_checkpointing``): one epoch with and without,
   each in its own process so that the peak RSS (ru_maxrss) is the variant's own;
3. tokenization: encoding the train, validation and held-out splits (what every stage
   does on start) against one epoch, to decide whether a tokenization cache would pay.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import PeakRSS, prepare, rss_mb  # noqa: E402
from lora_overhead import bare_epoch  # noqa: E402

PRESET = "deployments/minilm-boolq.yaml"


def setup(rows: int, *extra: str):
    return prepare(PRESET, [f"data.max_train={rows}", *extra])


def child(rows: int, checkpointing: bool) -> None:
    """One epoch, its peak RSS sampled while it runs (bench/common.py PeakRSS)."""
    s = setup(rows, f"lora.gradient_checkpointing={str(checkpointing).lower()}")
    before = rss_mb()
    with PeakRSS() as rss:
        seconds = bare_epoch(s.inputs, s.tok, s.enc, s.cfg.lora)
    print(json.dumps({"seconds": seconds, "peak_mb": rss.peak_mb, "before_mb": before}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=160)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--child", choices=["plain", "checkpointing"])
    ap.add_argument("--skip-threads", action="store_true", help="only parts 2 and 3")
    args = ap.parse_args()
    if args.child:
        return child(args.rows, args.child == "checkpointing")
    s = setup(args.rows)
    cores = os.cpu_count() or 1
    threads = {n: [] for n in ((cores,) if args.skip_threads else range(1, cores + 1))}
    for _ in range(args.reps):
        for n in threads:
            torch.set_num_threads(n)
            threads[n].append(bare_epoch(s.inputs, s.tok, s.enc, s.cfg.lora))
    torch.set_num_threads(cores)
    print(f"1. threads ({cores} cores, torch default {torch.get_num_threads()}), "
          f"one LoRA epoch of {len(s.enc)} rows:")
    for n, t in threads.items():
        print(f"   {n} thread(s): median {statistics.median(t):6.2f} s  "
              f"speed-up vs 1 thread {statistics.median(threads.get(1, t)) / statistics.median(t):.2f}x")
    variants = {"plain": [], "checkpointing": []}
    for _ in range(args.reps):
        for name in variants:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--rows", str(args.rows)],
                                 capture_output=True, text=True, check=True)
            variants[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("2. gradient checkpointing, one LoRA epoch per process:")
    for name, runs in variants.items():
        print(f"   {name:<14} median {statistics.median(r['seconds'] for r in runs):6.2f} s  "
              f"peak RSS {max(r['peak_mb'] for r in runs):7.0f} MB "
              f"(before the epoch {max(r['before_mb'] for r in runs):.0f} MB)")
    p, c = variants["plain"], variants["checkpointing"]
    time_x = statistics.median(r["seconds"] for r in c) / statistics.median(r["seconds"] for r in p)
    memory_x = (statistics.median(r["peak_mb"] - r["before_mb"] for r in c)
                / statistics.median(r["peak_mb"] - r["before_mb"] for r in p))
    print(f"   checkpointing / plain: time x{time_x:.2f}, "
          f"training memory (peak - loaded) x{memory_x:.2f}")
    tok_s = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        n = sum(len(s.inputs.sequences(split, s.tok)) for split in ("train", "valid", "eval"))
        tok_s.append(time.perf_counter() - t0)
    epoch = statistics.median(threads[cores])
    tok_per_k, train_per_k = 1000 * statistics.median(tok_s) / n, 1000 * epoch / len(s.enc)
    print(f"3. tokenization: {n} rows (train + validation + held-out) in {statistics.median(tok_s):.2f} s; "
          f"per 1,000 rows {tok_per_k:.2f} s against {train_per_k:.1f} s of one LoRA epoch "
          f"({100 * tok_per_k / train_per_k:.1f}%)")

if __name__ == "__main__":
    main()
