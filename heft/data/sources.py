"""Loading a task's rows, checking them and the recorded re-split.

Sources: a hub id (``google/boolq``, ``openai/gsm8k`` with ``data.subset=main``, loaded with
``datasets``), a local folder holding ``train*.jsonl`` and a held-out ``validation*`` /
``dev*`` / ``test*.jsonl``, or one JSONL file, local or any fsspec URL
(``s3://bucket/boolq/validation.jsonl`` through s3fs).  A source with only one
labelled split is re-split by a seeded shuffle; the seed and sizes are part of the
data config, hence of every downstream cache key, and the split is written out.

Rows are checked and normalised for their task's kind (heft/data/task.py) before anything is
trained: BoolQ rows to {question, passage, label}; a templated label task to {prompt, label};
a choice task to {prompt, choices, label}; a generate task to {prompt, target, answer}.  The
first bad row is named with its file, its number and the field.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from heft.config import ConfigError, DataConfig
from heft.data import answers
from heft.data.task import BUILTIN, ROW_FIELDS, Task, render, template_fields
from heft.store.fs import is_hub_id, url_to_fs

SPLITS = ("train", "valid", "eval")
DEFAULT_HOLDOUT = 1000  # rows held out when a single labelled split is re-split
EVAL_SPLITS = ("validation", "dev", "test")  # the held-out split a source offers, by preference
BOOLQ = BUILTIN["boolq"][0]


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


def _folder_files(folder: str, eval_split: str = "") -> dict[str, str]:
    fs, base = url_to_fs(folder)
    names = sorted(Path(p).name for p in fs.ls(base, detail=False) if p.endswith(".jsonl"))
    found = {}
    for split, prefixes in (("train", ("train",)), ("eval", (eval_split,) if eval_split else EVAL_SPLITS)):
        for prefix in prefixes:  # in order of preference: validation before test
            match = [n for n in names if n.startswith(prefix)]
            if match:
                found[split] = f"{folder.rstrip('/')}/{match[0]}"
                break
    if eval_split and "eval" not in found:
        raise DataError(f"data.eval_split={eval_split!r}: no {eval_split}*.jsonl in {folder!r} "
                        f"(it has {names})")
    if not found:
        raise DataError(f"data source {folder!r}: no train*.jsonl or validation*.jsonl inside")
    return found


def _hub_row(source: str, row: dict) -> dict:
    """A hub row in heft's field names where the hub's differ (BoolQ's boolean 'answer', ARC's
    choices as {text, label} and its 'answerKey' letter)."""
    row = dict(row)
    if source == "google/boolq" and isinstance(row.get("answer"), bool):
        row["label"] = row.pop("answer")
    if source == "allenai/ai2_arc" and isinstance(row.get("choices"), dict):
        keys = list(row["choices"]["label"])
        row["label"] = keys.index(row["answerKey"]) if row.get("answerKey") in keys else None
        row["choices"] = list(row["choices"]["text"])
    return row


def load_source(source: str, subset: str = "", eval_split: str = "") -> dict[str, tuple[str, list[dict]]]:
    """{'train'|'eval': (where, rows)}; one entry means the source must be re-split."""
    if is_hub_id(source):
        import datasets  # imported lazily: slow, and only the hub path needs it
        ds = datasets.load_dataset(source, subset or None)
        held = next((n for n in ((eval_split,) if eval_split else EVAL_SPLITS) if n in ds), None)
        if eval_split and held is None:
            raise DataError(f"data.eval_split={eval_split!r}: {source} has the splits {list(ds)}")
        out = {}
        for split, name in (("train", "train"), ("eval", held)):
            if name in ds:
                out[split] = (f"{source}[{name}]", [_hub_row(source, r) for r in ds[name]])
        return out
    fs, path = url_to_fs(source)
    if fs.isdir(path):
        return {split: (url, _read_jsonl(url)) for split, url in _folder_files(source, eval_split).items()}
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


def check_task_rows(rows: list[dict], where: str, task: Task, fmt: str) -> list[dict]:
    """The rows normalised for ``task``'s kind; the first bad one raises DataError naming it."""
    if task.kind == "label" and not task.template:
        return validate_rows(rows, where, fmt)  # BoolQ's question and passage
    if not rows:
        raise DataError(f"{where}: split is empty")
    needed = template_fields(task.template) + tuple(f for f in (task.target, task.choices) if f)
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise DataError(f"{where}: row {i}: expected a JSON object, got {type(r).__name__}")
        missing = [f for f in needed if f not in r]
        if missing:
            raise DataError(f"{where}: row {i}: no field {missing[0]!r} (the task reads "
                            f"{', '.join(needed)}; task.template={task.template!r})")
        prompt, gold = render(task.template, r), r[task.target]
        if task.kind == "label":
            if not isinstance(gold, bool):
                raise DataError(f"{where}: row {i}: field {task.target!r} must be a boolean, got {gold!r}")
            out.append({"prompt": prompt, "label": gold})
        elif task.kind == "choice":
            out.append({"prompt": prompt, "choices": _choices(r[task.choices], gold, where, i, task),
                        "label": gold})
        else:
            if not isinstance(gold, str) or not gold.strip():
                raise DataError(f"{where}: row {i}: field {task.target!r} must be a non-empty target text, "
                                f"got {gold!r}")
            answer = answers.extract(gold, task.answer)
            if answer is None:
                raise DataError(f"{where}: row {i}: task.answer={task.answer!r} reads no answer from its "
                                f"{task.target!r} {gold[:80]!r}")
            out.append({"prompt": prompt, "target": gold.strip(), "answer": answer})
    return out


def _choices(choices, gold, where: str, i: int, task: Task) -> list[str]:
    if not isinstance(choices, list) or len(choices) < 2 or \
            not all(isinstance(c, str) and c.strip() for c in choices):
        raise DataError(f"{where}: row {i}: field {task.choices!r} must be a list of at least two non-empty "
                        f"strings, got {choices!r}")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"{where}: row {i}: field {task.target!r} must be the gold choice's index in "
                        f"[0, {len(choices) - 1}], got {gold!r}")
    return [c.strip() for c in choices]


def split_rows(cfg: DataConfig, task: Task = BOOLQ) -> tuple[dict[str, list[dict]], dict]:
    """The train/valid/eval rows of ``task`` and a record of how they were made."""
    if not cfg.source:
        raise DataError(f"data.source: task {task.name} has no hub dataset to default to: name a folder, "
                        "a JSONL file or a hub id")
    loaded = load_source(cfg.source, cfg.subset, cfg.eval_split)
    if cfg.eval_source:
        loaded["eval"] = next(iter(load_source(cfg.eval_source, cfg.subset).values()))
    if task.name in ROW_FIELDS:
        loaded = {s: (where, [ROW_FIELDS[task.name](r) if isinstance(r, dict) else r for r in rs])
                  for s, (where, rs) in loaded.items()}
    rows = {s: check_task_rows(r, where, task, cfg.format) for s, (where, r) in loaded.items()}
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
                        f"in the training ({o['in_train']}) or validation ({o['in_valid']}) part (the same "
                        "question), so the held-out accuracy would be contaminated; use "
                        "separate sources, or data.allow_overlap=true to accept it")
    return rows, record


def row_identity(row: dict) -> tuple:
    """What makes two rows the same question: BoolQ's (question, passage), else the prompt and,
    for a choice task, its choices (ARC repeats generic stems with other choices)."""
    if "prompt" in row:
        return (row["prompt"].lower().strip(), tuple(c.lower() for c in row.get("choices", ())))
    return (row["question"].lower(), (row["passage"] or "").strip())


def overlap(rows: dict[str, list[dict]]) -> dict:
    """How many held-out rows ask the same as a training/validation row (row_identity)."""
    def keys(split):
        return {row_identity(r) for r in rows[split]}
    train, valid = keys("train"), keys("valid")
    held = [row_identity(r) for r in rows["eval"]]
    return {"eval_rows_seen": sum(k in train or k in valid for k in held),
            "in_train": sum(k in train for k in held), "in_valid": sum(k in valid for k in held)}


def read_split(folder: Path, split: str) -> list[dict]:
    """Rows of one split of a data artifact's local folder."""
    with open(folder / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]
