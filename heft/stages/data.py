"""Data stage: load, check and split the task's rows; write train/valid/eval JSONL.

Its key hashes the resolved task, the data config and the source files' contents
(heft/fingerprints.py), so an edited file or another task is a new data artifact and
everything downstream is rebuilt.  The floors a held-out accuracy is read against are recorded
here: the majority rate (always giving the most common gold answer: label, choice index or
generated answer) and, for a choice task, the chance rate (the mean of 1 / number of choices).
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter

from heft.data.sources import SPLITS, split_rows
from heft.data.task import Dataset
from heft.stages import Context
from heft.store.artifacts import Built


def gold(row: dict):
    """A row's gold answer, whatever the task's kind."""
    return row["answer"] if "answer" in row else row["label"]


def split_data(cfg: Dataset, parent: None, ctx: Context) -> Built:
    rows, record = split_rows(cfg.data, cfg.task)
    metrics = {}
    for split in SPLITS:
        n = len(rows[split])
        metrics[f"n_{split}"] = n
        common = Counter(str(gold(r)) for r in rows[split]).most_common(1)
        metrics[f"majority_{split}"] = common[0][1] / n if n else 0.0
        if cfg.task.kind == "choice" and n:
            metrics[f"chance_{split}"] = sum(1 / len(r["choices"]) for r in rows[split]) / n
        with open(ctx.out / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[split])
    (ctx.out / "split.json").write_text(json.dumps(record, indent=2))
    return Built(metrics, lineage={"data_key": ctx.step.key, "format": cfg.data.format,
                                   "task": dataclasses.asdict(cfg.task)})
