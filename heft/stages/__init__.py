"""The stages: each a function ``(stage config, parent artifact, Context) -> Built`` that
turns its inputs into files (in ``ctx.out``), metrics and lineage.  Finding a finished
artifact, the build lock, the temporary folder and publishing are the store's
(``ArtifactStore.get_or_build``); ``run_step`` joins the two.

The stage modules import torch, transformers and peft (seconds of start-up); a fully cached
rerun needs none of them, so each is imported when its stage first builds.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from heft import memory
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


_IMPORTS = threading.Lock()


def builder(stage: str):
    """The stage function, its heavy imports done once per process under a lock: two stages
    starting on two threads at once raced in transformers' lazy module loader (measured:
    "cannot import name 'AutoTokenizer' from 'transformers'")."""
    module, name = BUILDERS[stage]
    with _IMPORTS:
        if stage != "data":
            import peft  # noqa: F401
            from transformers import (AutoConfig, AutoModelForCausalLM,  # noqa: F401
                                      AutoModelForSequenceClassification, AutoTokenizer)
        return getattr(importlib.import_module(module), name)


def run_step(step: Step, parent: Artifact | None, store: ArtifactStore,
             progress: Progress | None = None, provenance: dict | None = None) -> Artifact:
    """The artifact of ``step``: found in the store, or built from ``parent`` and published
    (``provenance``, e.g. the MLflow run that builds it, is recorded in its meta.json)."""
    if (parent.key if parent else None) != step.parent_key:
        got = parent.key if parent else None
        raise ValueError(f"{step.label}: planned parent {step.parent_key}, got {got}")
    made = []

    def make(out):  # only called when the artifact is not in the store: a rerun imports nothing
        made.append(out)
        build = builder(step.stage)
        built = build(step.config, parent, Context(step, store, out, progress or Progress()))
        built.provenance.update(provenance or {})
        return built
    try:
        return store.get_or_build(step, parent, make)
    finally:
        if made:  # a stage that built: its model and tensors are dead now, their pages go back
            # to the system instead of staying in glibc's heap under the next stage (heft/memory.py)
            memory.release()
