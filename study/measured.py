"""Runs measured outside the study, reported beside it: ``bench/gpu_check.py`` on a lent GPU.

A study spec names each record and says how to show it (the facts of one record live there):

    measured:
      - record: docs/gpu/h200-2026-12-04.json     # what bench/gpu_check.py --out wrote
        cells: smollm2                            # the record's list of cells to show
        title: SmolLM2-135M-Instruct on a GPU     # the heading (device and date are appended)
        about: bf16 weights, seed 0, ...          # what the cells are, after the row count

A record holds the device, the date, the command, the training rows and the cells with their
held-out accuracy, 95% interval, majority rate and seconds.  The section says where the numbers
come from (a GPU run of the committed check, not this study's run); the held-out line and the
line on which cells learn are the study's own (study/verdicts.py), on the record's numbers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from heft.config import ConfigError
from study import verdicts

ENTRY_KEYS = ("record", "cells", "title", "about")
RECORD_KEYS = ("device", "date", "command", "train_rows")
CELL_KEYS = ("cell", "accuracy", "ci95", "majority", "n", "seconds")


@dataclass(frozen=True)
class Measured:
    """One record as the study spec names it."""
    record: str
    cells: str
    title: str
    about: str

    @classmethod
    def of(cls, entry) -> "Measured":
        if not isinstance(entry, dict) or sorted(entry) != sorted(ENTRY_KEYS):
            raise ConfigError(f"measured: {entry!r}: expected a mapping with exactly {list(ENTRY_KEYS)}")
        return cls(**{k: str(entry[k]) for k in ENTRY_KEYS})


def load(entries: tuple) -> list[tuple[Measured, dict]]:
    """[(entry, record)], each record checked for the fields the section reads."""
    out = []
    for entry in map(Measured.of, entries):
        if not Path(entry.record).is_file():
            raise ConfigError(f"measured: {entry.record!r} does not exist "
                              "(a bench/gpu_check.py --out record)")
        record = json.loads(Path(entry.record).read_text())
        missing = [k for k in RECORD_KEYS + (entry.cells,) if k not in record]
        missing += [f"{entry.cells}[{i}].{k}" for i, c in enumerate(record.get(entry.cells, []))
                    for k in CELL_KEYS if k not in c]
        if missing:
            raise ConfigError(f"measured: {entry.record!r} lacks {missing}")
        out.append((entry, record))
    return out


def rows(cells: list[dict]) -> list[dict]:
    """A record's cells as the study's rows (percent), for the study's own sentences."""
    return [{"label": c["cell"], "mean": 100 * c["accuracy"], "ci95_low": 100 * c["ci95"][0],
             "ci95_high": 100 * c["ci95"][1], "majority": 100 * c["majority"], "n": c["n"]}
            for c in cells]


def section(entry: Measured, record: dict) -> list[str]:
    """The markdown of one record: heading, provenance, table, held-out rows, verdict, skips."""
    cells = record[entry.cells]
    train = f"{record['train_rows']:,}" if record["train_rows"] else "all the"
    lines = [f"### {entry.title}: {record['device']}, {record['date']}", "",
             f"Not this study's run: the record `{entry.record}`, written by `{record['command']}` on a "
             f"lent GPU: {train} official train rows, {entry.about}.", "",
             "| cell | held-out accuracy | 95% CI | s (with its evaluations) |", "|---|---|---|---|"]
    lines += [f"| {c['cell']} | **{100 * c['accuracy']:.2f}** | {100 * c['ci95'][0]:.2f}-"
              f"{100 * c['ci95'][1]:.2f} | {c['seconds']:.0f} |" for c in cells]
    if cells:
        lines += ["", *verdicts.grid_lines(rows(cells))]
    if record.get("not_run"):
        why = record.get("not_run_why", "no reason recorded")
        lines += ["", f"Not run: {', '.join(record['not_run'])} ({why})."]
    return lines + [""]
