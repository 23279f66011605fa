"""Benchmark: length-grouped batches with dynamic padding vs. the two usual alternatives.

    TQDM_DISABLE=1 .venv/bin/python bench/batching.py            # MiniLM, 320 BoolQ rows, ~6 min
    TQDM_DISABLE=1 .venv/bin/python bench/batching.py --rows 640 --reps 3

One LoRA epoch (the bare loop of bench/lora_overhead.py: same model, optimizer, clipping)
with three ways of forming the same-size batches from the same shuffled rows:

* ``max_length``: random batches padded to model.max_length (a tokenizer called with
  ``padding="max_length"``, the simplest collator);
* ``dynamic``: random batches padded to their longest row (HF DataCollatorWithPadding);
* ``grouped``: heft's ``train_batches``: random mega-batches of 50 batches, sorted by
  length inside, batches shuffled, each padded to its longest row.

Prints the padded tokens each way moves through the model and the epoch times; the
variants alternate ``--reps`` times and the medians are compared.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import prepare  # noqa: E402
from lora_overhead import bare_epoch  # noqa: E402

from heft.data.batching import Encoded, train_batches  # noqa: E402


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def padded_to(enc: Encoded, width: int, pad_id: int) -> Encoded:
    """Every row right-padded to ``width`` tokens.  collate then also marks the pads as real
    (the model attends to them): the numerics differ from a masked max_length batch, the
    compute, which is what is measured here, is the same."""
    pad = lambda rows, v: [r + [v] * (width - len(r)) for r in rows]  # noqa: E731
    return dataclasses.replace(enc, input_ids=pad(enc.input_ids, pad_id),
                               token_type_ids=pad(enc.token_type_ids, 0) if enc.token_type_ids else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=320)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    env = prepare("deployments/minilm-boolq.yaml", [f"data.max_train={args.rows}", "data.valid_size=16"])
    cfg, inputs, tok, enc = env.cfg, env.inputs, env.tok, env.enc
    lora = dataclasses.replace(cfg.lora, epochs=1, head_lr=0.0)
    bs = lora.batch_size
    plans = {
        "max_length": (padded_to(enc, cfg.model.max_length, tok.pad_token_id),
                       random_batches(len(enc), bs, 1)),
        "dynamic": (enc, random_batches(len(enc), bs, 1)),
        "grouped": (enc, train_batches(enc, bs, lora.seed, 1)),
    }
    for name, (e, batches) in plans.items():
        moved = sum(len(b) * max(len(e.input_ids[i]) for i in b) for b in batches)
        print(f"{name:>10}: {moved} padded tokens per epoch ({sum(map(len, enc.input_ids))} real)")
    times = {name: [] for name in plans}
    for rep in range(args.reps):
        for name, (e, batches) in plans.items():
            times[name].append(bare_epoch(inputs, tok, e, lora, batches=batches))
        print(f"rep {rep + 1}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items()))
    med = {n: statistics.median(t) for n, t in times.items()}
    print("\nepoch (median): " + ", ".join(f"{n} {t:.1f} s" for n, t in med.items()))
    print(f"grouped is {med['max_length'] / med['grouped']:.2f}x faster than max_length padding, "
          f"{med['dynamic'] / med['grouped']:.2f}x faster than random batches with dynamic padding")


if __name__ == "__main__":
    main()
