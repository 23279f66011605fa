"""Benchmark: an evaluation's peak memory on the CPU against the order of its batches (issue 38
item 6: the demo's evaluations of the 3,270 BoolQ dev rows peaked above 3 GB).

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_memory.py                 # 4 arms, ~6 min
    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_memory.py --rows 1000 --arms longest,ascending

Each arm runs in its own process (a process's peak RSS never comes down): heft's ``predict``
(heft/modeling/scoring.py, the preset's precision) scores the preset's held-out split with the
untrained base model, batches of 64 rows grouped by length as heft groups them, in one of two
orders: ``longest`` first (heft's, heft/data/batching.py eval_batches) or ``ascending``, the
order heft used before.  Both orders hold the same rows in each batch; the scores are compared
and must be equal to the bit.

``...-after`` arms put glibc's malloc in the state a training stage leaves it in, before scoring:
its mmap threshold at 32 MB.  glibc raises the threshold to the size of each mmap'd block that
is freed, up to 32 MB, and every LoRA stage frees blocks that large, so in the flow every
evaluation after training carves all activations under 32 MB out of the heap.  A fresh
process starts at 128 KB, which hides most of the effect (``longest`` / ``ascending`` alone).
Printed per arm: the peak RSS while scoring (sampled every 20 ms) above the RSS before it,
the wall time, and the ratios of the orders.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PeakRSS, prepare, rss_mb  # noqa: E402

M_MMAP_THRESHOLD = -3   # mallopt's parameter number (malloc.h)


def arm(name: str, preset: str, rows: int) -> None:
    import torch

    from heft.data import batching
    from heft.modeling import scoring
    torch.set_num_threads(1)
    setup = prepare(preset, [f"data.max_eval={rows}"])
    inputs, tok = setup.inputs, setup.tok
    enc = inputs.sequences("eval", tok)
    model = inputs.load_weights(seed=0).eval()
    if name.startswith("ascending"):   # the same batches, narrowest first
        longest_first = batching.eval_batches
        scoring.eval_batches = lambda enc, size: longest_first(enc, size)[::-1]
    if name.endswith("-after"):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    before, start = rss_mb(), time.perf_counter()
    with PeakRSS() as rss:
        _, scores = scoring.predict(model, enc, 64, family=inputs.family, pooling=inputs.model_cfg.pooling,
                                    answer_ids=inputs.answer_ids(tok), pad_id=tok.pad_token_id,
                                    precision=inputs.precision, return_scores=True)
    digest = hashlib.sha256(scores.numpy().tobytes()).hexdigest()[:16]
    print(json.dumps({"arm": name, "rows": len(enc), "before_mb": round(before),
                      "peak_mb": round(rss.peak_mb), "s": round(time.perf_counter() - start, 1),
                      "scores_sha256": digest}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="deployments/minilm-boolq.yaml")
    ap.add_argument("--rows", type=int, default=0, help="held-out rows (0 = all)")
    ap.add_argument("--arms", default="longest,ascending,longest-after,ascending-after")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        arm(args.arm, args.preset, args.rows)
        return
    results = {}
    for name in args.arms.split(","):
        out = subprocess.run([sys.executable, __file__, "--arm", name, "--preset", args.preset,
                              "--rows", str(args.rows)], check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    rows = next(iter(results.values()))["rows"]
    print(f"{args.preset}: scoring {rows} held-out rows, batches of 64, one thread\n")
    print("| order | heap | peak above start MB | peak MB | s | scores sha256 |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        order, _, after = name.partition("-")
        print(f"| {order} | {'after training (32 MB threshold)' if after else 'fresh process'} | "
              f"{r['peak_mb'] - r['before_mb']:,} | {r['peak_mb']:,} | {r['s']} | {r['scores_sha256']} |")
    for suffix in ("", "-after"):
        a, b = results.get("longest" + suffix), results.get("ascending" + suffix)
        if a and b:
            memory = (a["peak_mb"] - a["before_mb"]) / (b["peak_mb"] - b["before_mb"])
            print(f"longest{suffix} / ascending{suffix}: memory above start {memory:.3f}, "
                  f"time {a['s'] / b['s']:.3f}, "
                  f"scores {'equal' if a['scores_sha256'] == b['scores_sha256'] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
