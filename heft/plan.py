"""A run's plan: every step (stage, config, parent, key), computed once before anything runs.

The chain per mode (stage 1 = LoRA, stage 2 = ReFT; data, base, merge and evaluate around them):

    heft:      data -> base -> lora -> merge -> reft      evaluates lora, merged, heft
    lora-only: data -> base -> lora -> merge              evaluates lora, merged
    reft-only: data -> base -> reft                       evaluates reft
    reft-lora: data -> base -> reft -> lora (the intervention frozen while LoRA trains;
               its reft step is reft-only's)              evaluates reft, reft-lora
    base:      data -> base                               evaluates base

Each step's key is ``stage_key(stage, config, parent key, inputs)``; the data step's inputs
are its source files' fingerprint and the base step's the model weights' fingerprint, so
every key below depends on both.  Validation, the flows, the Prefect tasks (their cache
keys), the build lock and the stage functions all read ``Step.key``; nothing recomputes it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from heft.config import DataConfig, RunConfig
from heft.modeling.precision import resolved
from heft.store.fingerprints import Fingerprints
from heft.store.keys import stage_key

# The evaluation that scores what each mode produces (the others score intermediate steps).
FINAL_EVAL = {"heft": "heft", "lora-only": "merged", "reft-only": "reft", "reft-lora": "reft-lora",
              "base": "base"}
TRAINS = {"heft": ("lora", "reft"), "lora-only": ("lora",), "reft-only": ("reft",),
          "reft-lora": ("reft", "lora"), "base": ()}


@dataclass(frozen=True)
class Step:
    """One unit of work: build (or find) the artifact ``key`` of ``stage`` from its parent's."""
    stage: str                 # data | base | lora | merge | reft | evaluate
    name: str                  # its output in a run: 'lora', 'eval:merged', ...
    config: Any                # the stage's frozen config dataclass
    key: str
    parent_key: str | None
    inputs: dict = field(default_factory=dict)  # content fingerprints hashed into the key

    @property
    def label(self) -> str:
        """'lora', or 'evaluate:merged' for an evaluation (Prefect task and MLflow run names)."""
        return f"evaluate:{self.name[5:]}" if self.stage == "evaluate" else self.stage


@dataclass(frozen=True)
class Plan:
    """Every step of one run, parents before children."""
    config: RunConfig
    steps: tuple[Step, ...]

    def __getitem__(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def __contains__(self, name: str) -> bool:
        return any(step.name == name for step in self.steps)

    def parent(self, step: Step) -> Step | None:
        return next((s for s in self.steps if s.key == step.parent_key), None)

    @property
    def evaluations(self) -> dict[str, Step]:
        """{'merged': step, 'heft': step, ...}"""
        return {s.name[5:]: s for s in self.steps if s.stage == "evaluate"}

    @property
    def final(self) -> Step:
        return self[f"eval:{FINAL_EVAL[self.config.mode]}"]


def trained_epochs(cfg: RunConfig) -> dict[str, int]:
    """{training stage: epochs} for the stages cfg.mode trains, e.g. {'lora': 3, 'reft': 1}."""
    return {stage: getattr(cfg, stage).epochs for stage in TRAINS[cfg.mode]}


def make_step(stage: str, name: str, config: Any, parent: Step | None, inputs: dict | None = None) -> Step:
    """The step of ``stage`` on ``parent``: the one place a key is computed."""
    parent_key = parent.key if parent else None
    key = stage_key(stage, config, parent_key, inputs)
    return Step(stage, name, config, key, parent_key, dict(inputs or {}))


def data_step(cfg: DataConfig, fingerprints: Fingerprints | None = None) -> Step:
    """The first step of every plan: its key hashes the data config and the files' contents."""
    return make_step("data", "data", cfg, None, {"files": (fingerprints or Fingerprints()).data(cfg)})


def plan(cfg: RunConfig, fingerprints: Fingerprints | None = None) -> Plan:
    """The steps of ``cfg.mode``.  Reads the data files and hashes the model folder once
    (pass one ``Fingerprints`` to plan many configs over the same sources)."""
    fingerprints = fingerprints or Fingerprints()
    steps: list[Step] = []

    def add(stage: str, name: str, config: Any, parent: Step | None, inputs: dict | None = None) -> Step:
        steps.append(make_step(stage, name, config, parent, inputs))
        return steps[-1]

    data = data_step(cfg.data, fingerprints)
    steps.append(data)
    # 'auto' precision becomes what this machine does: bf16-trained weights get their own keys
    model = dataclasses.replace(cfg.model, autocast=resolved(cfg.model.autocast))
    base = add("base", "base", model, data, {"weights": fingerprints.model(cfg.model)})
    if cfg.mode == "base":
        add("evaluate", "eval:base", cfg.eval, base)
    if cfg.mode in ("heft", "lora-only"):
        lora = add("lora", "lora", cfg.lora, base)
        merge = add("merge", "merge", cfg.merge, lora)
        add("evaluate", "eval:lora", cfg.eval, lora)
        add("evaluate", "eval:merged", cfg.eval, merge)
    if cfg.mode in ("heft", "reft-only", "reft-lora"):
        reft = add("reft", "reft", cfg.reft, merge if cfg.mode == "heft" else base)
        add("evaluate", "eval:" + ("heft" if cfg.mode == "heft" else "reft"), cfg.eval, reft)
    if cfg.mode == "reft-lora":
        lora = add("lora", "lora", cfg.lora, reft)
        add("evaluate", "eval:reft-lora", cfg.eval, lora)
    return Plan(cfg, tuple(steps))
