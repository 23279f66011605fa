"""``heft predict`` and ``heft export``: the trained model from the command line (no Prefect).

    heft predict --model <ref> --question "is the sky blue" --passage "..."
    heft predict --model <ref> --question "Donna weighs 69 pounds. ..."          (a generate task)
    heft predict --model <ref> --question "..." --choice "a gas" --choice "a solid"  (a choice task)
    heft predict --model <ref> --field year=1990 --question "..."            (a template's own fields)
    heft predict --model <ref> --input rows.jsonl --output predictions.jsonl
    heft export --model <ref> --to exported/            (or --to s3://bucket/models/x)
``<ref>``: an evaluation key, an artifact folder or URI, an exported folder, an MLflow run id
or a models:/ URI (heft/inference/load.py).  Rows are checked before the model loads.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from heft.config import ConfigError
from heft.data.sources import DataError, parse_jsonl


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="answer questions with a trained model")
    p.add_argument("--model", required=True, help="evaluation key, artifact/export folder or URI, "
                                                  "MLflow run id, runs:/ or models:/ URI")
    p.add_argument("--question", help="one question")
    p.add_argument("--passage", help="its passage (passage-format models)")
    p.add_argument("--choice", action="append", help="one choice of a choice task (give two or more)")
    p.add_argument("--field", action="append", metavar="NAME=VALUE", help="another field the model's prompt "
                                                                         "template reads")
    p.add_argument("--input", help="JSONL file of rows with the task's fields ({question, passage} for "
                                   "BoolQ)")
    p.add_argument("--output", help="JSONL file for the predictions (default: standard output)")
    p.add_argument("--root", help="artifact root for a key (default $HEFT_ARTIFACT_ROOT or .heft/artifacts)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for run ids and models:/ URIs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--verbose", action="store_true", help="also print library bars and warnings")
    e = sub.add_parser("export", help="write a trained model as one self-contained folder")
    e.add_argument("--verbose", action="store_true", help="also print library bars and warnings")
    e.add_argument("--model", required=True, help="as for predict")
    e.add_argument("--to", required=True, help="destination folder or URL (s3://...)")
    e.add_argument("--root", help="artifact root for a key")
    e.add_argument("--tracking-uri", help="MLflow tracking URI")


def read_rows(path: str) -> list[dict]:
    """The rows of a JSONL file; a bad line is a DataError naming the file and the row."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"--input {path!r}: {e.strerror}") from None
    return parse_jsonl(data, path)


def one_row(args) -> dict:
    """The row the command line describes: --question, --passage and each --field name=value."""
    row = {"question": args.question, "passage": args.passage}
    for item in args.field or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--field {item!r}: expected NAME=VALUE")
        row[name.strip()] = value
    return row


def predict_command(args) -> int:
    from heft.inference.load import open_resolved, prompt_format, resolve, task_of
    from heft.inference.model import check_rows
    try:
        if bool(args.question or args.field) == bool(args.input):
            raise ConfigError("predict: give --question (with --passage, --choice or --field) or "
                              "--input rows.jsonl")
        rows = read_rows(args.input) if args.input else [one_row(args)]
        resolved = resolve(args.model, args.root, args.tracking_uri)  # a bad reference fails here,
        task = task_of(resolved)
        if args.choice:
            rows[0][task.choices or "choices"] = args.choice
        check_rows(rows, prompt_format(resolved), task)              # a bad row here: before any loading
        model = open_resolved(resolved)
        out = model.predict(rows, batch_size=args.batch_size, desc="predict")
    except (ConfigError, FileExistsError) as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 2
    lines = "".join(json.dumps({**({"question": r.get("question")} if not args.output else {}), **o}) + "\n"
                    for r, o in zip(rows, out))
    if args.output:
        Path(args.output).write_text(lines)
        print(f"{len(out)} predictions written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(lines)
    return 0


def export_command(args) -> int:
    from heft.inference.export import export
    from heft.inference.load import open_resolved, resolve
    try:
        where = export(open_resolved(resolve(args.model, args.root, args.tracking_uri)), args.to)
    except (ConfigError, FileExistsError) as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 2
    print(f"exported to {where}")
    return 0
