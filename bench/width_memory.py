"""Benchmark: a LoRA epoch's peak memory on the CPU against the batch widths it sees and
gradient checkpointing (issue 38 item 6, the open part: the demo's LoRA stage peaks above 2 GB).

    OMP_NUM_THREADS=1 .venv/bin/python bench/width_memory.py               # 4 arms x 30 steps, ~12 min
    OMP_NUM_THREADS=1 .venv/bin/python bench/width_memory.py --steps 60 --arms 1,64

Each arm runs in its own process (a process's peak RSS never comes down): the MiniLM preset's
model and LoRA (all-MiniLM-L6-v2, r=16 on query/key/value/dense, dropout 0.1, AdamW), batches of
16 rows whose widths are drawn uniformly from 90-256 tokens (the spread a length-grouped BoolQ
epoch at max_length 256 shows), optionally rounded up to a multiple of ``m`` tokens.  Printed per
arm: ``ru_maxrss`` after steps 5, 10, 20 and the last, RSS at the end, and the wall time.

Why widths: torch's CPU tensors come from glibc's malloc, which carves activations above its
(raised) mmap threshold out of the heap; batches of a new width every step leave holes the next
step cannot reuse, so the peak climbs with the steps (docs/benchmarks.md section 15).  Widths
rounded to a multiple of 64 repeat (at most five shapes at max_length 256), the freed blocks fit
the next batch, and the peak stops growing.  Gradient checkpointing keeps only each block's input
and recomputes the rest in backward (same numbers: the RNG state is restored for dropout).
This script uses transformers + peft directly, not heft's loop, so the allocator's behaviour is
seen without anything else in the process.
"""
from __future__ import annotations

import argparse
import math
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from common import rss_mb  # noqa: E402


def arm(multiple: int, steps: int, checkpointing: bool) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    sys.path.insert(0, str(ROOT))
    from heft.modeling.models import resolve_name
    torch.manual_seed(0)
    rng = random.Random(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_name("sentence-transformers/all-MiniLM-L6-v2"), num_labels=2)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["query", "key", "value", "dense"]))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.0)
    peaks, start = [], time.perf_counter()
    for _ in range(steps):
        width = rng.randint(90, 256)
        width = math.ceil(width / multiple) * multiple
        ids = torch.randint(1000, 20000, (16, width))
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.randint(0, 2, (16,)))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    rss = rss_mb()
    marks = " ".join(f"{peaks[min(i, steps) - 1]:,.0f}" for i in (5, 10, 20, steps))
    print(f"| {multiple} | {'on' if checkpointing else 'off'} | {marks} | {rss:,.0f} | "
          f"{time.perf_counter() - start:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--arms", default="1,64,1c,64c", help="width multiples; a trailing c adds checkpointing")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        arm(int(args.arm.rstrip("c")), args.steps, args.arm.endswith("c"))
        return
    print(f"{args.steps} LoRA steps of 16 rows, widths 90-256 tokens\n")
    print("| width multiple | checkpointing | peak MB after steps 5, 10, 20, last | RSS at the end MB | s |")
    print("|---|---|---|---|---|")
    for a in args.arms.split(","):
        subprocess.run([sys.executable, __file__, "--arm", a, "--steps", str(args.steps)], check=True,
                       stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
