"""Runs measured outside the study, reported beside it: ``bench/gpu_check.py`` on a lent GPU.

A study spec names their JSON records (``measured: [docs/gpu/h200-2026-12-04.json]``), each
what ``bench/gpu_check.py --out`` wrote: the device, the date, the command, the training
rows and the SmolLM2 cells with their held-out accuracy, 95% interval, majority rate and
seconds.  Section 5 of results.md shows each record under its own heading, saying where its
numbers come from (a GPU run of the committed check, not this study's run); the held-out line
and the line on which cells learn are the study's own (heft.study.verdicts), on the record's numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

from heft.config import ConfigError
from heft.study import verdicts

RECORD_KEYS = ("device", "date", "command", "train_rows", "smollm2")
CELL_KEYS = ("cell", "accuracy", "ci95", "majority", "n", "seconds")


def load(paths: tuple[str, ...]) -> list[tuple[str, dict]]:
    """[(path, record)], each record checked for the fields the section reads."""
    out = []
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"measured: {path!r} does not exist (a bench/gpu_check.py --out record)")
        record = json.loads(Path(path).read_text())
        missing = [k for k in RECORD_KEYS if k not in record]
        missing += [f"smollm2[{i}].{k}" for i, c in enumerate(record.get("smollm2", [])) for k in CELL_KEYS
                    if k not in c]
        if missing:
            raise ConfigError(f"measured: {path!r} lacks {missing}")
        out.append((path, record))
    return out


def rows(record: dict) -> list[dict]:
    """The record's cells as the study's rows (percent), for the study's own sentences."""
    return [{"label": c["cell"], "mean": 100 * c["accuracy"], "ci95_low": 100 * c["ci95"][0],
             "ci95_high": 100 * c["ci95"][1], "majority": 100 * c["majority"], "n": c["n"]}
            for c in record["smollm2"]]


def section(path: str, record: dict) -> list[str]:
    """The markdown of one record: heading, provenance, table, held-out rows, verdict, skips."""
    cells = record["smollm2"]
    train = f"{record['train_rows']:,}" if record["train_rows"] else "all the"
    lines = [f"### SmolLM2-135M-Instruct on a GPU: {record['device']}, {record['date']}", "",
             f"Not this study's run: the record `{path}`, written by `{record['command']}` on a "
             f"lent GPU: {train} official train rows, bf16 weights, seed 0, constant schedules; the "
             "cells of deployments/study/smollm2-cpu.yaml at the GPU's scale.", "",
             "| cell | held-out accuracy | 95% CI | s (with its evaluations) |", "|---|---|---|---|"]
    lines += [f"| {c['cell']} | **{100 * c['accuracy']:.2f}** | {100 * c['ci95'][0]:.2f}-"
              f"{100 * c['ci95'][1]:.2f} | {c['seconds']:.0f} |" for c in cells]
    if cells:
        lines += ["", *verdicts.grid_lines(rows(record))]
    if record.get("not_run"):
        why = record.get("not_run_why", "no reason recorded")
        lines += ["", f"Not run: {', '.join(record['not_run'])} ({why})."]
    return lines + [""]
