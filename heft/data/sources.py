"""BoolQ loading, validation and the recorded re-split.

Sources: a hub id (``google/boolq``, loaded with ``datasets``), a local folder holding
``train*.jsonl`` / ``validation*.jsonl``, or one JSONL file, local or any fsspec URL
(``s3://bucket/boolq/validation.jsonl`` through s3fs).  A source with only one
labelled split is re-split by a seeded shuffle; the seed and sizes are part of the
data config, hence of every downstream cache key, and the split is written out.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from heft.config import ConfigError, DataConfig
from heft.store.fs import is_hub_id, url_to_fs

SPLITS = ("train", "valid", "eval")
DEFAULT_HOLDOUT = 1000  # rows held out when a single labelled split is re-split


class DataError(ConfigError):
    """A data row or source is invalid; the message names file, row and field."""


def _read_jsonl(url: str) -> list[dict]:
    # One whole-object GET (cat_file), not a streamed open(): a streamed read sizes the file
    # with a HEAD first, and a failed HEAD on S3 can make s3fs read an empty file silently.
    fs, path = url_to_fs(url)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise DataError(f"data source {url!r} does not exist") from None
    return parse_jsonl(data, url)


EXCERPT = 40  # bytes of a bad line quoted in an error: enough to find it, never the whole file


def parse_jsonl(data: bytes, where: str) -> list[dict]:
    """The JSON object on each non-blank line of ``data``; a line that is not UTF-8, not JSON
    or not an object raises DataError naming ``where`` and the row (0-based line number) with
    a short excerpt.  Decoding line by line matters: a decode error of the whole file carries
    the whole file, and Prefect's error log printed all 480 KB of it."""
    rows = []
    for i, raw in enumerate(data.splitlines()):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            start = max(0, e.start - EXCERPT // 2)
            raise DataError(f"{where}: row {i}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                            f"{e.start} of the line, near {raw[start:start + EXCERPT]!r}); "
                            "save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: row {i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            shown = line.strip()
            shown = shown if len(shown) <= EXCERPT else shown[:EXCERPT] + "..."
            raise DataError(f"{where}: row {i}: expected a JSON object such as {{\"question\": ...}}, "
                            f"got {type(row).__name__} {shown}")
        rows.append(row)
    return rows


def _folder_files(folder: str) -> dict[str, str]:
    fs, base = url_to_fs(folder)
    names = sorted(Path(p).name for p in fs.ls(base, detail=False) if p.endswith(".jsonl"))
    found = {}
    for split, prefixes in (("train", ("train",)), ("eval", ("validation", "dev", "test"))):
        match = [n for n in names if n.startswith(prefixes)]
        if match:
            found[split] = f"{folder.rstrip('/')}/{match[0]}"
    if not found:
        raise DataError(f"data source {folder!r}: no train*.jsonl or validation*.jsonl inside")
    return found


def load_source(source: str) -> dict[str, tuple[str, list[dict]]]:
    """{'train'|'eval': (where, rows)}; one entry means the source must be re-split."""
    if is_hub_id(source):
        import datasets  # imported lazily: slow, and only the hub path needs it
        ds = datasets.load_dataset(source)
        out = {}
        for split, name in (("train", "train"), ("eval", "validation")):
            if name in ds:
                rows = [{"question": r["question"], "passage": r.get("passage"),
                         "label": r["answer"] if "answer" in r else r["label"]} for r in ds[name]]
                out[split] = (f"{source}[{name}]", rows)
        return out
    fs, path = url_to_fs(source)
    if fs.isdir(path):
        return {split: (url, _read_jsonl(url)) for split, url in _folder_files(source).items()}
    return {"train": (source, _read_jsonl(source))}


def validate_rows(rows: list[dict], where: str, fmt: str) -> list[dict]:
    """Check and normalise rows to {question, passage, label}; name the first bad one."""
    if not rows:
        raise DataError(f"{where}: split is empty")
    clean = []
    for i, r in enumerate(rows):
        for name in ("question", "label"):
            if name not in r:
                raise DataError(f"{where}: row {i}: missing field {name!r}")
        if not isinstance(r["question"], str) or not r["question"].strip():
            raise DataError(f"{where}: row {i}: field 'question' must be a non-empty string, "
                            f"got {r['question']!r}")
        if not isinstance(r["label"], bool):
            raise DataError(f"{where}: row {i}: field 'label' must be a boolean, got {r['label']!r}")
        passage = r.get("passage")
        if fmt == "passage" and not isinstance(passage, str):
            raise DataError(f"{where}: row {i}: field 'passage' must be a string in passage format, "
                            f"got {passage!r} (use data.format=question for question-only data)")
        clean.append({"question": r["question"].strip(), "passage": passage, "label": r["label"]})
    return clean


def split_rows(cfg: DataConfig) -> tuple[dict[str, list[dict]], dict]:
    """The train/valid/eval rows and a record of how they were made."""
    loaded = load_source(cfg.source)
    if cfg.eval_source:
        loaded["eval"] = next(iter(load_source(cfg.eval_source).values()))
    rows = {s: validate_rows(r, where, cfg.format) for s, (where, r) in loaded.items()}
    train = rows["train"]
    idx = list(range(len(train)))
    random.Random(cfg.split_seed).shuffle(idx)
    record = {"sources": {s: where for s, (where, _) in loaded.items()}, "resplit": "eval" not in rows}
    if record["resplit"]:  # one labelled split: hold out the first holdout_size of the shuffle
        holdout = DEFAULT_HOLDOUT if cfg.holdout_size is None else cfg.holdout_size
        if holdout >= len(train):
            raise DataError(f"data.holdout_size={holdout}: must be in [1, {len(train)}) "
                            f"to re-split the single split of {cfg.source!r}")
        rows["eval"] = [train[i] for i in idx[:holdout]]
        idx = idx[holdout:]
        record["holdout_size"] = holdout
    elif cfg.holdout_size is not None:
        raise DataError(f"data.holdout_size={cfg.holdout_size}: {cfg.source!r} has its own held-out split "
                        f"({record['sources']['eval']}); holdout_size only applies to re-splitting one split")
    if cfg.valid_size >= len(idx):
        raise DataError(f"data.valid_size={cfg.valid_size}: leaves no training rows (of {len(idx)})")
    rows["valid"] = [train[i] for i in idx[:cfg.valid_size]]
    rows["train"] = [train[i] for i in idx[cfg.valid_size:]]
    if cfg.max_train:
        rows["train"] = rows["train"][:cfg.max_train]
    if cfg.max_eval:
        rows["eval"] = rows["eval"][:cfg.max_eval]
    record["overlap"] = overlap(rows)
    if record["overlap"]["eval_rows_seen"] and not cfg.allow_overlap:
        o = record["overlap"]
        raise DataError(f"data: {o['eval_rows_seen']} of the {len(rows['eval'])} held-out rows also occur "
                        f"in the training ({o['in_train']}) or validation ({o['in_valid']}) part (same "
                        "question and passage), so the held-out accuracy would be contaminated; use "
                        "separate sources, or data.allow_overlap=true to accept it")
    return rows, record


def overlap(rows: dict[str, list[dict]]) -> dict:
    """How many held-out rows have the same (question, passage) as a training/validation row."""
    def keys(split):
        return {(r["question"].lower(), (r["passage"] or "").strip()) for r in rows[split]}
    train, valid = keys("train"), keys("valid")
    held = [(r["question"].lower(), (r["passage"] or "").strip()) for r in rows["eval"]]
    return {"eval_rows_seen": sum(k in train or k in valid for k in held),
            "in_train": sum(k in train for k in held), "in_valid": sum(k in valid for k in held)}


def read_split(folder: Path, split: str) -> list[dict]:
    """Rows of one split of a data artifact's local folder."""
    with open(folder / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]
