"""docs/config.md: every run-config field, generated from the dataclasses (heft/config.py).

    .venv/bin/python tools/config_reference.py          # rewrite docs/config.md
    .venv/bin/python tools/config_reference.py --check  # exit 1 if docs/config.md is stale

Each field's type, default and help text come from its declaration; what it changes in the
cache keys comes from the same metadata the keys read (``key=False`` fields are in no key) and
from which stage its section configures.  tests/test_docs.py fails when the file is stale.
"""
from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from heft.config import RunConfig  # noqa: E402
from heft.modes import MODES  # noqa: E402

OUT = ROOT / "docs" / "config.md"
# section -> the stage whose key hashes it (each key also hashes its parent's: a change moves
# the keys of that stage and of every stage after it in the chain)
STAGE_OF = {"model": "base", "task": "data", "data": "data", "lora": "lora", "merge": "merge", "reft": "reft",
            "eval": "evaluate"}
TOP_LEVEL = {
    "mode": "which steps run (heft/modes.py); each step's key is its own, so modes share steps",
    "seed": "sets lora.seed and reft.seed (see those)",
    "artifact_root": "not in any key: where the artifacts are kept",
    "tracking_uri": "not in any key: where MLflow records the runs",
    "experiment": "not in any key: the MLflow experiment",
}


def type_name(kind) -> str:
    text = str(kind).replace("typing.", "").replace(" | ", " or ")  # '|' would split the table cell
    return getattr(kind, "__name__", text) if not typing.get_args(kind) else text


def default_of(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.metadata.get("help", "").endswith(")") and "(default $" in f.metadata.get("help", ""):
        return "from the environment"
    else:
        return "-"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "unset" if value is None else f"`{value}`" if value != "" else "empty"


def key_effect(section: str, f: dataclasses.Field) -> str:
    if not f.metadata.get("key", True):
        return "not in any key (changes how the stage runs, not what it makes)"
    stage = STAGE_OF[section]
    if stage == "evaluate":
        return "the evaluate keys"
    if f.metadata.get("key") == "unless-default":
        return f"the {stage} key and every key after it, only when not the default (older keys stay valid)"
    return f"the {stage} key, and every key after it"


def rows(section: str, cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue  # a section of its own
        name = f"{section}.{f.name}" if section else f.name
        effect = key_effect(section, f) if section else TOP_LEVEL[f.name]
        text = f.metadata.get("help", "")
        out.append(f"| `{name}` | {type_name(hints[f.name])} | {default_of(f)} | {text} | {effect} |")
    return out


def render() -> str:
    hints = typing.get_type_hints(RunConfig)
    lines = ["# Configuration reference", "",
             "Generated from the dataclasses in `heft/config.py` by `tools/config_reference.py` "
             "(`make docs`); do not edit by hand. Every field is an option of a preset YAML "
             "(`lora: {rank: 16}`) and of the command line (`heft run lora.rank=16`), an MLflow param "
             "of the runs that use it, and, unless marked otherwise, part of a cache key: a stage's key "
             "hashes its own section and its parent's key, so a change reruns that stage and everything "
             "after it, never what comes before.", "",
             "Modes and the stages they chain: " + "; ".join(
                 f"`{m.name}`: data -> base" + "".join(f" -> {s}" for s in m.chain) for m in MODES.values())
             + ".", "", "## Run", "",
             "| option | type | default | what it does | cache keys it changes |", "|---|---|---|---|---|"]
    lines += rows("", RunConfig)
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            cls = hints[f.name]
            lines += ["", f"## `{f.name}` ({cls.__name__}, the {STAGE_OF[f.name]} stage)", ""]
            doc = (cls.__doc__ or "").strip()
            if doc and not doc.startswith(cls.__name__ + "("):
                lines += [doc.splitlines()[0], ""]
            lines += ["| option | type | default | what it does | cache keys it changes |",
                      "|---|---|---|---|---|", *rows(f.name, cls)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv[1:]:
        stale = not OUT.exists() or OUT.read_text() != text
        print(f"{OUT.relative_to(ROOT)} is {'stale: run tools/config_reference.py' if stale else 'current'}")
        sys.exit(1 if stale else 0)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
