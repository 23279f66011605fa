"""BoolQ loading, validation, the recorded re-split, and the prompt formats.

Sources: a hub id (``google/boolq``, loaded with ``datasets``), a local folder holding
``train*.jsonl`` / ``validation*.jsonl``, or one JSONL file, local or any fsspec URL
(``s3://bucket/boolq/validation.jsonl`` through s3fs).  A source with only one
labelled split is re-split by a seeded shuffle; the seed and sizes are part of the
data config, hence of every downstream cache key, and the split is written out.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path


from heft.artifacts import Artifact, ArtifactStore, stage_key
from heft.config import ConfigError, DataConfig
from heft.storage import url_to_fs

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SPLITS = ("train", "valid", "eval")
ANSWERS = {True: "true", False: "false"}  # the words a causal LM is scored on


class DataError(ConfigError):
    """A data row or source is invalid; the message names file, row and field."""


def is_hub_id(source: str) -> bool:
    return "://" not in source and not os.path.exists(source) and bool(HUB_ID.match(source))


def _read_jsonl(url: str) -> list[dict]:
    # One whole-object GET (cat_file), not a streamed open(): a streamed read sizes the file
    # with a HEAD first, and a failed HEAD on S3 can make s3fs read an empty file silently.
    fs, path = url_to_fs(url)
    try:
        text = fs.cat_file(path).decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"data source {url!r} does not exist") from None
    rows = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{url}: row {i}: not valid JSON ({e.msg})") from None
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
            raise DataError(f"{where}: row {i}: field 'question' must be a non-empty string, got {r['question']!r}")
        if not isinstance(r["label"], bool):
            raise DataError(f"{where}: row {i}: field 'label' must be a boolean, got {r['label']!r}")
        passage = r.get("passage")
        if fmt == "passage" and not isinstance(passage, str):
            raise DataError(f"{where}: row {i}: field 'passage' must be a string in passage format, "
                            f"got {passage!r} (use data.format=question for question-only data)")
        clean.append({"question": r["question"].strip(), "passage": passage, "label": r["label"]})
    return clean


# Fingerprints by the (path, size, mtime/ETag) of every source file: a run computes the
# data key several times (validation, the data task, every stage's key), and a grid once
# per cell; each would otherwise read (or, on S3, download) the whole source again.  A
# changed file changes its stamp, so an edit is never missed; the key itself is unchanged.
_FINGERPRINTS: dict[tuple, str] = {}


def _stamp(fs, path: str) -> tuple:
    info = fs.info(path)
    return (path, info.get("size"), str(info.get("mtime") or info.get("LastModified") or ""),
            str(info.get("ETag") or ""))


def _fingerprint(cfg: DataConfig) -> str:
    """Content hash of local/remote files (so edited data invalidates the cache); hub ids by name."""
    sources = []
    for src in filter(None, (cfg.source, cfg.eval_source)):
        if is_hub_id(src):
            sources.append((src, None, []))
            continue
        fs, path = url_to_fs(src)
        if not fs.exists(path):
            raise DataError(f"data source {src!r} does not exist")
        files = [p for p in (sorted(fs.find(path)) if fs.isdir(path) else [path]) if p.endswith((".jsonl", ".json"))]
        sources.append((src, fs, files))
    stamps = tuple((src, str(fs.protocol) if fs else "hub", tuple(_stamp(fs, p) for p in files) if fs else ())
                   for src, fs, files in sources)
    if stamps in _FINGERPRINTS:
        return _FINGERPRINTS[stamps]
    h = hashlib.sha256()
    for src, fs, files in sources:
        if fs is None:
            h.update(src.encode())
            continue
        for p in files:
            h.update(p.rsplit("/", 1)[-1].encode())
            h.update(fs.cat_file(p))
    _FINGERPRINTS[stamps] = h.hexdigest()[:20]
    return _FINGERPRINTS[stamps]


def data_key(cfg: DataConfig) -> str:
    return stage_key("data", cfg, _fingerprint(cfg))


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
        if cfg.holdout_size <= 0 or cfg.holdout_size >= len(train):
            raise DataError(f"data.holdout_size={cfg.holdout_size}: must be in [1, {len(train)}) "
                            f"to re-split the single split of {cfg.source!r}")
        rows["eval"] = [train[i] for i in idx[:cfg.holdout_size]]
        idx = idx[cfg.holdout_size:]
    if cfg.valid_size >= len(idx):
        raise DataError(f"data.valid_size={cfg.valid_size}: leaves no training rows (of {len(idx)})")
    rows["valid"] = [train[i] for i in idx[:cfg.valid_size]]
    rows["train"] = [train[i] for i in idx[cfg.valid_size:]]
    if cfg.max_train:
        rows["train"] = rows["train"][:cfg.max_train]
    if cfg.max_eval:
        rows["eval"] = rows["eval"][:cfg.max_eval]
    return rows, record


def run_data(cfg: DataConfig, store: ArtifactStore) -> Artifact:
    """Stage 0: load, validate and split; write train/valid/eval JSONL (cached by content key)."""
    key = data_key(cfg)
    if (found := store.find("data", key)) is not None:
        return found
    rows, record = split_rows(cfg)
    metrics = {}
    for split in SPLITS:
        n = len(rows[split])
        metrics[f"n_{split}"] = n
        metrics[f"majority_{split}"] = max(sum(r["label"] for r in rows[split]), n - sum(
            r["label"] for r in rows[split])) / n if n else 0.0
    with store.build("data", key) as tmp:
        for split in SPLITS:
            with open(tmp / f"{split}.jsonl", "w") as f:
                for r in rows[split]:
                    f.write(json.dumps(r) + "\n")
        (tmp / "split.json").write_text(json.dumps(record, indent=2))
        art = store.publish(tmp, "data", key, cfg, None, metrics,
                            lineage={"data_uri": store.uri("data", key), "data_key": key,
                                     "format": cfg.format})
    return art


def read_split(store: ArtifactStore, data: Artifact, split: str) -> list[dict]:
    with open(store.local_path(data) / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]


def prompt(row: dict, fmt: str, causal: bool) -> tuple[str, str | None]:
    """(text, text_pair) for an encoder; (prompt, None) for a causal LM scored on ' true'/' false'."""
    question = row["question"].rstrip("?") + "?"
    if not causal:
        return (question, row["passage"]) if fmt == "passage" else (question, None)
    if fmt == "passage":
        return f"{row['passage']}\nQuestion: {question}\nAnswer:", None
    # LLM-Adapters / LoReFT question-only template (their BoolQ train and test files)
    return ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nPlease answer the following question with "
            f"true or false, question: {question}\n\nAnswer format: true/false\n\n### Response:\n"
            "the correct answer is", None)
