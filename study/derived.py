"""Tasks derived from local BoolQ files, for studies that need a second task offline.

``passage-match``: "does this passage belong to this question?"  Every row of a BoolQ file
with passages keeps its question; a seeded coin decides whether it keeps its own passage
(label 1) or gets the passage of a row from a *different article* (label 0).  The output is
ordinary passage-format JSONL (question, passage, label, title), so the normal loader,
re-split and prompts apply unchanged.  It is a relevance task (like QNLI), easier than
BoolQ for a sentence encoder, and built only from real text.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from heft.data.sources import DataError, load_source, validate_rows

TASKS = ("passage-match",)


def passage_match(rows: list[dict], seed: int) -> list[dict]:
    """Half the rows (by a seeded coin) get a passage from another title, labelled 0."""
    titles = [r.get("title") or r["passage"][:40] for r in rows]
    if len(set(titles)) < 2:
        raise DataError("passage-match needs rows from at least two articles (titles)")
    rng = random.Random(seed)
    out = []
    for i, row in enumerate(rows):
        matched = rng.random() < 0.5
        j = i
        while not matched and titles[j] == titles[i]:  # another article's passage
            j = rng.randrange(len(rows))
        out.append({"question": row["question"], "passage": rows[j]["passage"],
                    "label": matched, "title": titles[j]})
    return out


def write_derived_task(task: str, source: str, out: str, seed: int = 0) -> Path:
    """Write the derived task's JSONL to ``out`` (atomically); unchanged inputs give the
    same bytes, so the data stage's content key, and every cache below it, stays valid."""
    if task not in TASKS:
        raise DataError(f"derived task {task!r}: known tasks are {', '.join(TASKS)}")
    loaded = load_source(source)  # a hub id gives both splits: take the dev split (passages)
    where, rows = loaded.get("eval") or loaded["train"]
    rows = validate_rows(rows, where, "passage")
    derived = passage_match(rows, seed)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in derived))
    os.replace(tmp, path)
    return path
