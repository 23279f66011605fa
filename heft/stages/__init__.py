"""The stages: each a function ``(stage config, parent artifact, Context) -> Built`` that
turns its inputs into files (in ``ctx.out``), metrics and lineage.  Finding a finished
artifact, the build lock, the temporary folder and publishing are the store's
(``ArtifactStore.get_or_build``); ``run_step`` joins the two.

The stage modules import torch, transformers and peft (seconds of start-up); a fully cached
rerun needs none of them, so each is imported when its stage first builds.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from heft.plan import Step
from heft.progress import Progress
from heft.store.artifacts import Artifact, ArtifactStore

# stage -> (module, function)
BUILDERS = {"data": ("heft.stages.data", "split_data"), "base": ("heft.stages.base", "describe_base"),
            "lora": ("heft.stages.lora", "train_lora"), "merge": ("heft.stages.merge", "merge_lora"),
            "reft": ("heft.stages.reft", "train_reft"), "evaluate": ("heft.stages.evaluate", "evaluate")}


@dataclass
class Context:
    """What a stage function gets besides its config and parent."""
    step: Step                # its planned key and inputs
    store: ArtifactStore      # the parent's files, checkpoints
    out: Path                 # the folder to write the artifact's files into
    progress: Progress = field(default_factory=Progress)


def builder(stage: str):
    module, name = BUILDERS[stage]
    return getattr(importlib.import_module(module), name)


def run_step(step: Step, parent: Artifact | None, store: ArtifactStore,
             progress: Progress | None = None) -> Artifact:
    """The artifact of ``step``: found in the store, or built from ``parent`` and published."""
    if (parent.key if parent else None) != step.parent_key:
        got = parent.key if parent else None
        raise ValueError(f"{step.label}: planned parent {step.parent_key}, got {got}")
    build = builder(step.stage)
    return store.get_or_build(step, parent, lambda out: build(
        step.config, parent, Context(step, store, out, progress or Progress())))
