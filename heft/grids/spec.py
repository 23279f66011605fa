"""Grids of pipeline runs: epoch allocations, ablations, baselines and orderings, seeds.

A grid spec (YAML under deployments/grids/) is a base preset plus dotted overrides,
explicit ``cells`` and/or ``axes`` whose product is taken with every cell, and ``seeds``:

    name: reft-layers
    preset: deployments/minilm-boolq.yaml
    overrides: [lora.schedule=constant]
    cells: [{label: HEFT 3+3, mode: heft, lora.epochs: 3, reft.epochs: 3}, ...]
    axes: {reft.layer_fraction: [0.3125, 0.46875, 0.625], reft.rank: [2, 4, 8]}
    seeds: [0, 1, 2]
    epoch_scale: 1.0      # multiply every epoch count (tests run the paper preset at 0.1)

Every cell becomes an ordinary ``RunConfig``; nothing here knows about caching.  Sharing
comes from the stage keys: cells that agree on data, model and LoRA config share the LoRA
and merge artifacts, so a ReFT-layer sweep trains LoRA once.

Two grid-only conveniences, resolved here so the stage configs (and keys) stay plain:
  * ``reft.layer_fraction: f`` -> ``reft.layer = floor(f * depth)`` (clamped to depth-1), so
    the paper's layers {10, 15, 20} of 32 (0.3125, 0.46875, 0.625) give {1, 2, 3} on a
    6-block MiniLM and {1, 2, 3} on 5-block stories260K with one preset.
  * zero epochs mean "no such stage": heft with reft.epochs=0 is lora-only, with
    lora.epochs=0 reft-only, both 0 the untrained base.  (A LoReFT trained for 0 epochs is
    not the identity: R and W start random, so it would be a random intervention.)
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any

from heft.config import ConfigError, RunConfig
from heft.modes import MODES
from heft.plan import trained_epochs
from heft.presets import DEFAULT_PRESET, from_dict, merge_values, nested, parse_overrides, read_preset
from heft.store.fs import normalize_root
from heft.store.keys import canonical_json, key_fields

LAYER_FRACTION = "reft.layer_fraction"


@dataclass(frozen=True)
class GridSpec:
    name: str
    preset: str = DEFAULT_PRESET
    overrides: tuple[str, ...] = ()
    cells: tuple[dict, ...] = ()
    axes: tuple[tuple[str, tuple], ...] = ()
    seeds: tuple[int, ...] = ()       # empty: the preset's own seeds, one run per cell
    epoch_scale: float = 1.0
    # where the steps run (not part of any cell: the same grid gives the same artifacts anywhere)
    workers: int = 1                  # steps at the same time (threads, or Dask worker processes)
    dask: str = ""                    # "" = threads in the flow; "local" = a LocalCluster of
                                      # `workers` processes; "tcp://host:8786" = an existing cluster
    deployment: str = ""              # fan each cell out to this deployment (e.g. heft/boolq-llama2-7b)

    def __post_init__(self):
        if not self.name:
            raise ConfigError("grid.name: a grid needs a name (it names the MLflow parent run)")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"grid.workers={self.workers!r}: must be a whole number >= 1")
        if self.dask and self.deployment:
            raise ConfigError(f"grid.dask={self.dask!r} and grid.deployment={self.deployment!r}: choose one "
                              "(steps on a Dask cluster, or cells on a work pool)")
        if self.dask and self.dask != "local" and "://" not in self.dask:
            raise ConfigError(f"grid.dask={self.dask!r}: 'local' or a scheduler address like tcp://host:8786")
        if not 0 < self.epoch_scale <= 100:
            raise ConfigError(f"grid.epoch_scale={self.epoch_scale!r}: must be in (0, 100]")
        for key, values in self.axes:
            if not values:
                raise ConfigError(f"grid.axes.{key}: needs at least one value")
        for i, cell in enumerate(self.cells):
            if not isinstance(cell, dict):
                raise ConfigError(f"grid.cells[{i}]={cell!r}: expected a mapping of dotted keys")


@dataclass(frozen=True)
class Cell:
    """One pipeline run of a grid: a label shared across seeds, and its resolved config."""
    label: str
    seed: int
    config: RunConfig
    settings: dict  # what this cell sets (dotted keys), layer fractions resolved to layers
    scaled: str = ""  # with an epoch scale: what the cell trains, 'x0.1 = 2+2' (the label keeps 20+20)

    @property
    def title(self) -> str:
        """The label as reports and run names show it: 'HEFT 20+20 (x0.1 = 2+2)' when scaled."""
        return f"{self.label} ({self.scaled})" if self.scaled else self.label

    @property
    def method(self) -> str:
        return self.config.mode

    @property
    def final_eval(self) -> str:
        return MODES[self.config.mode].final

    @property
    def epochs(self) -> dict[str, int]:
        return trained_epochs(self.config)

    @property
    def total_epochs(self) -> int:
        return sum(self.epochs.values())

    @property
    def run_name(self) -> str:
        return f"{self.title} seed={self.seed}"

    def mlflow_tags(self, grid_name: str, grid_run: str = "") -> dict[str, str]:
        """The tags of the cell's MLflow run, wherever it runs (a thread, a work pool);
        ``grid_run``: the grid's MLflow run (its saved view shows the runs tagged with it)."""
        return {"heft.grid": grid_name, "heft.cell": self.label, "heft.method": self.method,
                "heft.seed": str(self.seed), **({"heft.grid_run": grid_run} if grid_run else {})}


def load_grid(path: str, overrides: list[str] = ()) -> GridSpec:
    """Read a grid YAML; ``overrides`` are grid fields (seeds=[0,1], epoch_scale=0.1, preset=...)
    or run-config keys (data.max_train=100), which are appended to the grid's overrides."""
    values = read_preset(path)
    grid_fields = {f.name for f in dataclasses.fields(GridSpec)}
    extra = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in grid_fields:
            values[key] = parse_overrides([item])[key]
        else:
            extra.append(item)
    unknown = sorted(set(values) - grid_fields)
    if unknown:
        known = ", ".join(sorted(grid_fields))
        raise ConfigError(f"grid {path!r}: unknown key(s) {unknown} (known: {known})")
    axes = values.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"grid {path!r}: axes must map dotted keys to lists, got {axes!r}")
    return GridSpec(
        name=str(values.get("name", "")), preset=values.get("preset", DEFAULT_PRESET),
        overrides=tuple(values.get("overrides") or ()) + tuple(extra),
        cells=tuple(values.get("cells") or ()),
        axes=tuple((k, tuple(v if isinstance(v, list) else [v])) for k, v in axes.items()),
        seeds=tuple(int(s) for s in (values.get("seeds") or ())),
        epoch_scale=float(values.get("epoch_scale", 1.0)), workers=values.get("workers", 1),
        dask=str(values.get("dask") or ""), deployment=str(values.get("deployment") or ""))


def _scaled(epochs: int, scale: float) -> int:
    return 0 if epochs == 0 else max(1, round(epochs * scale))


def _scaled_note(cfg: RunConfig, scale: float) -> str:
    """'x0.1 = 2+2': the epochs a scaled cell trains, in chain order ('' unscaled or untrained)."""
    trained = trained_epochs(cfg)
    if scale == 1 or not trained:
        return ""
    return f"x{scale:g} = " + "+".join(str(e) for e in trained.values())


def _canonical_mode(values: dict) -> str:
    mode = values.get("mode", "heft")
    lora, reft = values["lora"]["epochs"] > 0, values["reft"]["epochs"] > 0
    if mode in ("heft", "reft-lora") and not (lora and reft):
        return "lora-only" if lora else "reft-only" if reft else "base"
    if (mode == "lora-only" and not lora) or (mode == "reft-only" and not reft):
        return "base"
    return mode


def _label(cell: dict, axis_settings: dict, settings: dict) -> str:
    """'HEFT 3+3 layer=2 rank=4': the cell's label, then each axis by its last name (the
    full dotted key when two axes share a last name, as lora.epochs and reft.epochs do)."""
    parts = [str(cell["label"])] if "label" in cell else [f"{k}={v}" for k, v in cell.items()]
    lasts = [k.split(".")[-1] for k in axis_settings]
    for key, value in axis_settings.items():
        if key == LAYER_FRACTION:
            key, value = "reft.layer", settings["reft.layer"]
        short = key.split(".")[-1]
        parts.append(f"{short if lasts.count(short) == 1 else key}={value}")
    return " ".join(parts) or "default"


def expand(spec: GridSpec, depth_of=None) -> list[Cell]:
    """All cells of the grid, in order: cells x product(axes) x seeds; duplicates (cells that
    compute the same thing, see ``cell_identity``) are kept once, under the first label."""
    depth_of = functools.lru_cache(depth_of or model_depth)
    preset = merge_values(read_preset(spec.preset), parse_overrides(list(spec.overrides)))
    base = dataclasses.asdict(from_dict(RunConfig, preset, ""))  # preset errors surface here, once
    names = [k for k, _ in spec.axes]
    out, seen = [], set()
    for cell in spec.cells or ({},):
        for combo in itertools.product(*(v for _, v in spec.axes)):
            axis_settings = dict(zip(names, combo))
            settings = {k: v for k, v in cell.items() if k != "label"} | axis_settings
            values = copy.deepcopy(base)
            if LAYER_FRACTION in settings:
                frac = float(settings[LAYER_FRACTION])
                if not 0 <= frac < 1:
                    raise ConfigError(f"{LAYER_FRACTION}={frac!r}: must be in [0, 1)")
                model = settings.get("model.name", values["model"]["name"])
                depth = depth_of(model)
                settings["reft.layer"] = min(depth - 1, math.floor(frac * depth))
            values = merge_values(values, nested({k: v for k, v in settings.items() if k != LAYER_FRACTION}))
            for stage in ("lora", "reft"):
                values[stage]["epochs"] = _scaled(int(values[stage]["epochs"]), spec.epoch_scale)
            values["mode"] = _canonical_mode(values)
            for seed in spec.seeds or (None,):
                run_values = dict(values, seed=seed) if seed is not None else values
                cfg = from_dict(RunConfig, run_values, "")
                identity = cell_identity(cfg)
                if identity in seen:
                    continue
                seen.add(identity)
                label = _label(cell, axis_settings, settings)
                out.append(Cell(label, cfg.lora.seed if seed is None else seed,
                                cfg, settings, _scaled_note(cfg, spec.epoch_scale)))
    return out


def model_depth(name: str) -> int:
    from heft.modeling import models  # transformers: only when a layer fraction needs a depth
    return models.depth_of(models.auto_config(name))


def cell_identity(cfg: RunConfig) -> str:
    """What a cell computes, as canonical JSON of the key fields (heft/store/keys.py) of the
    stage configs its mode uses (a lora-only cell ignores reft.*), its mode and its root."""
    return canonical_json({"mode": cfg.mode, "root": normalize_root(cfg.artifact_root),
                           **{name: key_fields(getattr(cfg, name)) for name in MODES[cfg.mode].sections}})


def spec_dict(spec: GridSpec, cells: list[Cell]) -> dict[str, Any]:
    """The grid as logged to MLflow (grid.yaml): the spec and every resolved cell."""
    return {"spec": dataclasses.asdict(spec) | {"axes": {k: list(v) for k, v in spec.axes}},
            "cells": [{"label": c.label, "title": c.title, "seed": c.seed, "method": c.method,
                       "epochs": c.epochs, "settings": c.settings} for c in cells]}
