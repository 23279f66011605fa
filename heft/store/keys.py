"""Cache keys: what makes two stage artifacts the same.

key = sha256 of the canonical JSON of
    {"format": FORMAT_VERSION, "stage": "lora", "config": key_fields(cfg),
     "parent": <parent step's key>, "inputs": {content fingerprints the stage reads}}
truncated to 20 hex digits.

``key_fields`` reads the config's *declared fields*, not its ``repr``: a field is in the key
unless its metadata says ``key=False`` (e.g. ``lora.gradient_checkpointing``: it changes
memory and time, not the result).  ``key="unless-default"`` puts a field in the key only when
it is set away from its default: a field added after artifacts were built, whose default is what
they were built with, so their keys stay valid (``reft.prefix_dropout``).  Renaming a class or
reordering fields therefore leaves every key alone, and ``meta.json`` records the exact dict
that was hashed, so a key can be recomputed from the artifact alone.  Canonical JSON has sorted
keys, no whitespace and no fallback encoder: a value JSON cannot represent is an error, never a
silent ``str()``.

The same ``key_fields`` decides whether two grid cells compute the same thing
(heft.grids.spec.cell_identity).  Bump FORMAT_VERSION whenever the on-disk layout or the
meaning of a key changes: artifacts of older versions are then simply not found.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

# 3: keys hash declared fields (was the config's repr); the base model's weights are an input
FORMAT_VERSION = 3
KEY_LENGTH = 20


def key_fields(cfg: Any) -> dict[str, Any]:
    """{field: value} of the fields of dataclass ``cfg`` that change its artifact
    (nested dataclasses recursively, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("key", True):
            continue
        if f.metadata.get("key") == "unless-default" and getattr(cfg, f.name) == f.default:
            continue  # a field added later: at its default the key stays what it was before it existed
        out[f.name] = _plain(getattr(cfg, f.name))
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return key_fields(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, no NaN, no fallback: equal values give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(obj: Any, length: int = KEY_LENGTH) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def stage_key(stage: str, cfg: Any, parent_key: str | None, inputs: dict[str, str] | None = None) -> str:
    """The cache key of a stage artifact (see the module docstring)."""
    return digest(key_payload(stage, cfg, parent_key, inputs))


def key_payload(stage: str, cfg: Any, parent_key: str | None, inputs: dict[str, str] | None = None) -> dict:
    """The dict ``stage_key`` hashes; written to meta.json as ``keyed``."""
    payload = {"format": FORMAT_VERSION, "stage": stage, "config": key_fields(cfg), "parent": parent_key}
    if inputs:
        payload["inputs"] = dict(inputs)
    return payload
