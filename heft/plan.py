"""A run's plan: every step (stage, config, parent, key), computed once before anything runs.

The steps are the mode's chain (heft/modes.py) after ``data -> base``, each stage on the one
before, plus one evaluation step per evaluation the mode names.  Each step's key is
``stage_key(stage, config, parent key, inputs)``; the data step's inputs are its source files'
fingerprint and the base step's the model weights' fingerprint (heft/fingerprints.py), so
every key below depends on both.  Validation, the runners, the Prefect tasks (their cache
keys), the build lock and the stage functions all read ``Step.key``; nothing recomputes it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from heft.config import RunConfig
from heft.data.task import Dataset, dataset
from heft.modeling.precision import resolved
from heft.modes import MODES, Mode
from heft.fingerprints import Fingerprints
from heft.store.keys import stage_key

EVAL_PREFIX = "eval:"


@dataclass(frozen=True)
class Step:
    """One unit of work: build (or find) the artifact ``key`` of ``stage`` from its parent's."""
    stage: str                 # data | base | lora | merge | reft | evaluate
    name: str                  # its output in a run: 'lora', 'eval:merged', ...
    config: Any                # the stage's frozen config dataclass
    key: str
    parent_key: str | None
    inputs: dict = field(default_factory=dict)  # content fingerprints hashed into the key
    evaluation: str = ""       # an evaluate step: which evaluation it is ('merged', 'heft', ...)
    detail: str = ""           # what tells it apart from its stage's other steps: 'layer=1 · seed=0'

    @property
    def label(self) -> str:
        """'lora', or 'evaluate:merged' for an evaluation (tags, log lines, who needs a step)."""
        return f"evaluate:{self.evaluation}" if self.evaluation else self.stage

    @property
    def title(self) -> str:
        """'reft · layer=1 · seed=0', 'evaluate:heft · HEFT layer=1 seed=0': the Prefect task-run and
        MLflow stage-run name, which says what the step is among many."""
        return f"{self.label} · {self.detail}" if self.detail else self.label


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
    def mode(self) -> Mode:
        return MODES[self.config.mode]

    @property
    def evaluations(self) -> dict[str, Step]:
        """{'merged': step, 'heft': step, ...}"""
        return {s.evaluation: s for s in self.steps if s.evaluation}

    @property
    def final(self) -> Step:
        """The evaluation whose model is the run's result."""
        return self.evaluations[self.mode.final]

    @property
    def last_trained(self) -> Step | None:
        """The last training step: its validation accuracy after the last epoch is the run's."""
        trains = self.mode.trains
        return self[trains[-1]] if trains else None


# the fields a run's training steps are named by (a grid names them by the fields its steps vary)
SALIENT = {"lora": ("rank", "epochs"), "reft": ("layer", "rank", "epochs")}


def settings(config: Any, fields) -> str:
    """'layer=1 · seed=0': the fields named, then the seed (always: a new seed is a new model)."""
    names = [f for f in fields if f != "seed"] + (["seed"] if hasattr(config, "seed") else [])
    values = {f: getattr(config, f) for f in names}
    return " · ".join(f"{f}={','.join(v) if isinstance(v, tuple) else v}" for f, v in values.items())


def titled(steps: list[Step], fields: dict[str, tuple[str, ...]] = SALIENT,
           evaluations: dict[str, str] | None = None) -> dict[str, Step]:
    """{key: the step with its ``detail``}, parents first: a training step by ``fields`` of its
    stage and its seed, a merge or an evaluation by what it scores (its parent's detail) unless
    ``evaluations`` names it ({key: the grid cell it belongs to}), data by its source, base by
    its model."""
    trained = {s.key: settings(s.config, fields.get(s.stage, ())) for s in steps if s.stage in SALIENT}
    stage_of = {s.key: s.stage for s in steps}
    names = [(stage_of[k], d) for k, d in trained.items()]
    out: dict[str, Step] = {}
    for step in steps:
        parent = out.get(step.parent_key)
        if step.stage in SALIENT:
            detail = trained[step.key]
            if names.count((step.stage, detail)) > 1:  # the same settings on another model: say which
                detail += f" · on {stage_of.get(step.parent_key, 'base')}"
        elif step.stage == "data":
            detail = "/".join(step.config.data.source.rstrip("/").split("/")[-2:])
        elif step.stage == "base":
            detail = step.config.name.rstrip("/").rsplit("/", 1)[-1]
        elif step.key in (evaluations or {}):
            detail = evaluations[step.key]
        else:
            detail = parent.detail if parent and parent.stage not in ("data", "base") else ""
        out[step.key] = dataclasses.replace(step, detail=detail)
    return out


def run_title(cfg: RunConfig) -> str:
    """'HEFT 3+1 · stories260K · seed=0': a run's name, what it trains on which model."""
    mode = MODES[cfg.mode]
    epochs = "+".join(str(e) for e in trained_epochs(cfg).values())
    model = cfg.model.name.rstrip("/").rsplit("/", 1)[-1]
    seed = f" · seed={getattr(cfg, mode.trains[0]).seed}" if mode.trains else ""
    return f"{mode.short} {epochs}".strip() + f" · {model}{seed}"


def trained_epochs(cfg: RunConfig) -> dict[str, int]:
    """{training stage: epochs} for the stages cfg.mode trains, e.g. {'lora': 3, 'reft': 1}."""
    return {stage: getattr(cfg, stage).epochs for stage in MODES[cfg.mode].trains}


def make_step(stage: str, name: str, config: Any, parent: Step | None, inputs: dict | None = None,
              evaluation: str = "") -> Step:
    """The step of ``stage`` on ``parent``: the one place a key is computed."""
    parent_key = parent.key if parent else None
    key = stage_key(stage, config, parent_key, inputs)
    return Step(stage, name, config, key, parent_key, dict(inputs or {}), evaluation)


def data_step(cfg: Dataset, fingerprints: Fingerprints | None = None) -> Step:
    """The first step of every plan: its key hashes the task, the data config and the files'
    contents."""
    return make_step("data", "data", cfg, None, {"files": (fingerprints or Fingerprints()).data(cfg.data)})


def plan(cfg: RunConfig, fingerprints: Fingerprints | None = None) -> Plan:
    """The steps of ``cfg.mode``.  Reads the data files and hashes the model folder once
    (pass one ``Fingerprints`` to plan many configs over the same sources)."""
    fingerprints = fingerprints or Fingerprints()
    mode = MODES[cfg.mode]
    data = data_step(dataset(cfg.task, cfg.data), fingerprints)
    # 'auto' precision becomes what this machine does: bf16-trained weights get their own keys
    model = dataclasses.replace(cfg.model, autocast=resolved(cfg.model.autocast))
    base = make_step("base", "base", model, data, {"weights": fingerprints.model(cfg.model)})
    steps, by_stage, waiting = [data, base], {"base": base}, []

    def evaluate_built() -> None:  # what is built so far is scored before the next training stage
        steps.extend(make_step("evaluate", EVAL_PREFIX + name, cfg.eval, by_stage[of], evaluation=name)
                     for name, of in waiting)
        waiting.clear()
    parent = base
    for stage in mode.chain:
        if stage in ("lora", "reft"):
            evaluate_built()
        parent = by_stage[stage] = make_step(stage, stage, getattr(cfg, stage), parent)
        steps.append(parent)
        waiting += [(name, of) for name, of in mode.evaluations if of == stage]
    waiting += [(name, of) for name, of in mode.evaluations if of == "base"]
    evaluate_built()
    return Plan(cfg, tuple(titled(steps).values()))
