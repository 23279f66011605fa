"""Presets (YAML files in deployments/) plus dotted overrides -> a validated RunConfig.

    model: {name: ../shared/models/stories260K}
    lora: {epochs: 3}
and ``lora.rank=16 reft.layer=4`` on the command line.  Unknown keys are errors
that name the key and where it came from; values are parsed as YAML scalars.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from heft.config import ConfigError, RunConfig

DEFAULT_PRESET = "deployments/minilm-boolq.yaml"  # the embedded offline default
FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true/false.  PyYAML's 1.1 rules read off/on/no/yes
    as booleans, so ``model.autocast=off`` arrived as False and a country code 'no' as a bool."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                             list("tTfF"))


class DuplicateKey(yaml.YAMLError):
    """A mapping that names a key twice.  YAML loaders keep the last value silently: a second
    ``lora:`` section replaced the first whole (its epochs and lr fell back to defaults), and a
    second ``axes:`` turned a 12-cell grid into 4."""

    def __init__(self, key: str, first: int, second: int):
        super().__init__(f"duplicate key {key!r} at line {second} (first at line {first}); "
                         "YAML would silently keep only the last one")


def check_duplicates(node: yaml.Node, path: str = "", seen: set | None = None) -> None:
    """Raise DuplicateKey for the first key named twice in any mapping under ``node``
    (nested keys are named by their dotted path, e.g. 'lora.rank'; lines are 1-based)."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            name = f"{path}.{key}" if path and key is not None else key
            if key is not None and key != "<<":  # '<<' merges: later keys override on purpose
                if key in lines:
                    raise DuplicateKey(name, lines[key], key_node.start_mark.line + 1)
                lines[key] = key_node.start_mark.line + 1
            check_duplicates(value_node, name or path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            check_duplicates(item, path, seen)


def load_yaml(text: str) -> Any:
    """The YAML document in ``text``; a key named twice in one mapping raises DuplicateKey."""
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_duplicates(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def merge_values(base: dict, extra: dict) -> dict:
    """Nested dicts: ``extra`` wins, mappings merge key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_values(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def nested(dotted: dict[str, Any]) -> dict:
    """{'lora.rank': 8, 'mode': 'heft'} -> {'lora': {'rank': 8}, 'mode': 'heft'}."""
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def read_preset(path: str | Path) -> dict:
    try:
        data = load_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"preset {str(path)!r} does not exist") from None
    except DuplicateKey as e:  # presets, grid and study files all come here
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {str(path)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {str(path)!r}: expected a mapping at top level, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> dict:
    flat = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. reft.layer=4")
        key, raw = item.split("=", 1)
        try:
            flat[key.strip()] = load_yaml(raw) if raw != "" else ""
        except DuplicateKey as e:
            raise ConfigError(f"override {item!r}: {e}") from None
    return nested(flat)


def number(value: Any, name: str, kind: type) -> int | float:
    """A numeric option's value; '3e-3' counts (PyYAML reads it as a string: YAML 1.1 wants
    '3.0e-3', people don't), booleans and other strings do not."""
    if isinstance(value, str) and FLOAT_RE.match(value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"option {name}={value!r}: expected a number")
    if kind is int and value != int(value):
        raise ConfigError(f"option {name}={value!r}: expected a whole number")
    return kind(value)


def boolean(value: Any, name: str) -> bool:
    """A boolean option: YAML's true/false, or the words 'true'/'false' (a quoted "false" in a
    preset means false; anything else is an error, never silently true)."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"option {name}={value!r}: expected true or false")
    return value


def from_dict(cls, values: dict, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a dict, recursing into nested dataclass fields."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown option {name!r} (known: {', '.join(sorted(fields))})")
        factory = fields[key].default_factory
        default = factory() if factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"option {name!r} must be a mapping, got {value!r}")
            value = from_dict(type(default), value, name)
        elif isinstance(value, list) and isinstance(fields[key].default, tuple):
            value = tuple(value)
        elif type(fields[key].default) is bool:
            value = boolean(value, name)
        elif type(fields[key].default) in (int, float):
            value = number(value, name, type(fields[key].default))
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None


def load_run_config(preset: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    values = read_preset(preset) if preset else {}
    return from_dict(RunConfig, merge_values(values, parse_overrides(list(overrides))), "")


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)
