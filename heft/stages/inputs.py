"""What a stage inherits from its parents: model config, data split, weights to load.

The model a stage sees is assembled from lineage entries, in this order:
``weights`` (base or merged folder) -> ``head`` (a seq-cls head trained by ReFT) ->
``adapter`` (a LoRA adapter not yet merged) -> ``intervention`` (a LoReFT hook).
Each stage sets or clears the entries it changes; the rest are inherited.  References to
files of earlier artifacts are written ``artifact:<stage>/<key>/<path>`` and resolved
against the store, so an artifact root can move without its lineage going stale.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from heft.config import ModelConfig
from heft.data.batching import Encoded, encode, encode_sequences
from heft.data.sources import read_split
from heft.data.task import Task
from heft.modeling import models
from heft.modeling.answering import Answerer, accuracy
from heft.modeling.loreft import Intervention
from heft.modeling.sequences import lm_loss
from heft.modeling.training import Objective
from heft.store.artifacts import Artifact, ArtifactStore


@dataclass
class StageInputs:
    """Everything a stage reads from its parent, resolved to local objects."""
    store: ArtifactStore
    parent: Artifact
    model_cfg: ModelConfig
    family: str
    depth: int
    hidden_size: int

    @classmethod
    def of(cls, parent: Artifact, store: ArtifactStore) -> "StageInputs":
        lin = parent.meta["lineage"]
        return cls(store=store, parent=parent, model_cfg=ModelConfig(**lin["model_config"]),
                   family=lin["family"], depth=lin["depth"], hidden_size=lin["hidden_size"])

    def resolve(self, ref: str) -> str:
        """A lineage reference ('artifact:merge/<key>' or a hub id/folder) -> loadable path."""
        if ref.startswith("artifact:"):
            stage, key, *sub = ref.removeprefix("artifact:").split("/")
            return str(Path(self.store.open(self.artifact(stage, key)), *sub))  # sha256-checked
        return ref

    def optional(self, name: str) -> str | None:
        """A lineage entry resolved to a local path, or None when the chain has none."""
        ref = self.parent.meta["lineage"].get(name)
        return self.resolve(ref) if ref else None

    @property
    def precision(self) -> str:
        """'bfloat16' (CPU bf16 autocast) or 'off', as resolved when the run was planned."""
        return self.model_cfg.autocast

    @property
    def gguf_file(self) -> str:
        """The GGUF file the weights and tokenizer come from ('' once merged into safetensors)."""
        return self.parent.meta["lineage"].get("gguf_file") or ""

    def tokenizer(self):
        return models.load_tokenizer(self.resolve(self.parent.lineage("tokenizer")), self.family,
                                     self.gguf_file)

    def load_weights(self, seed: int):
        """Plain HF model from the parent's weights.  Seeded: a new seq-cls head is random."""
        path = self.resolve(self.parent.lineage("weights"))  # outside the lock: may download or hash
        return models.load_model(path, self.family, self.model_cfg.dtype, self.gguf_file,
                                 seed=seed).to(models.device())

    def load_head(self, model) -> None:
        """Put a seq-cls head trained by an earlier ReFT stage into ``model`` (if any)."""
        if (path := self.optional("head")):
            from safetensors.torch import load_file
            model.load_state_dict(load_file(path), strict=False)

    def intervention(self) -> Intervention | None:
        """The chain's LoReFT intervention (eval mode), or None."""
        if (folder := self.optional("intervention")) is None:
            return None
        iv = Intervention.load(Path(folder))
        iv.loreft.to(models.device())
        return iv

    def rows(self, split: str) -> list[dict]:
        data = self.artifact("data", self.parent.lineage("data_key"))
        return read_split(self.store.open(data), split)

    def artifact(self, stage: str, key: str) -> Artifact:
        found = self.store.find(stage, key)
        if found is None:
            raise FileNotFoundError(f"artifact {stage}/{key} is missing under {self.store.root}")
        return found

    @property
    def task(self) -> Task:
        """The chain's task, as the data stage resolved it."""
        return Task(**self.parent.lineage("task"))

    def sequences(self, split: str, tok) -> Encoded:
        """What training reads of a split: a label task's prompts, or each row's prompt plus its
        gold continuation (the gold choice, the target text)."""
        rows, task = self.rows(split), self.task
        if task.kind == "label":
            return encode(rows, tok, self.parent.lineage("format"), self.family, self.model_cfg.max_length)
        return encode_sequences(rows, tok, task, self.model_cfg.max_length, all_choices=False)

    def answer_ids(self, tok):
        return models.answer_token_ids(tok) if self.family == "causal-lm" else None

    def answerer(self, model, tok, intervention=None) -> Answerer:
        return Answerer(model, tok, self.task, self.family, self.model_cfg.pooling,
                        self.parent.lineage("format"), self.model_cfg.max_length, self.answer_ids(tok),
                        intervention, self.precision)

    def objective(self, model, tok, intervention=None) -> Objective:
        """The training sequences, the task's loss and its validation accuracy for ``model``."""
        task, answer_ids = self.task, self.answer_ids(tok)
        valid = self.rows("valid")
        answerer = self.answerer(model, tok, intervention)
        loss = models.label_loss(self.family, self.model_cfg.pooling, answer_ids) if task.kind == "label" \
            else lm_loss

        def validate(m) -> float | None:
            if not valid:
                return None
            return accuracy(task, valid, dataclasses.replace(answerer, model=m).answer(valid, desc="valid"))
        return Objective(self.sequences("train", tok), loss, validate, tok.pad_token_id, self.precision)


def artifact_ref(stage: str, key: str) -> str:
    return f"artifact:{stage}/{key}"
