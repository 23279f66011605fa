"""Data stage: load, validate and split the rows; write train/valid/eval JSONL.

Its key hashes the data config and the source files' contents (heft/fingerprints.py),
so an edited file is a new data artifact and everything downstream is rebuilt.
"""
from __future__ import annotations

import json

from heft.config import DataConfig
from heft.data.sources import SPLITS, split_rows
from heft.stages import Context
from heft.store.artifacts import Built


def split_data(cfg: DataConfig, parent: None, ctx: Context) -> Built:
    rows, record = split_rows(cfg)
    metrics = {}
    for split in SPLITS:
        n, true = len(rows[split]), sum(r["label"] for r in rows[split])
        metrics[f"n_{split}"] = n
        metrics[f"majority_{split}"] = max(true, n - true) / n if n else 0.0
        with open(ctx.out / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[split])
    (ctx.out / "split.json").write_text(json.dumps(record, indent=2))
    return Built(metrics, lineage={"data_key": ctx.step.key, "format": cfg.format})
