"""What a stage inherits from its parents: model config, data split, weights to load.

The chain is data -> base -> lora -> merge -> reft -> evaluate (lora-only stops after
merge, reft-only starts at base, reft-lora runs base -> reft -> lora).  ``base`` is a
virtual artifact (no files): its key hashes the model config and the data key, so every
later key depends on both.

The model a stage sees is assembled from lineage entries, in this order:
``weights`` (base or merged folder) -> ``head`` (a seq-cls head trained by ReFT) ->
``adapter`` (a LoRA adapter not yet merged) -> ``intervention`` (a LoReFT hook).
Each stage sets or clears the entries it changes; the rest are inherited.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from heft import models
from heft.artifacts import Artifact, ArtifactStore, stage_key
from heft.batching import Encoded, encode
from heft.config import ModelConfig
from heft.data import read_split
from heft.loreft import Intervention


def base_artifact(model_cfg: ModelConfig, data: Artifact) -> Artifact:
    """Stage "base": a virtual artifact naming the pretrained weights (nothing is written)."""
    hf_config = models.auto_config(model_cfg.name)
    family = models.family_of(model_cfg, hf_config)
    key = stage_key("base", model_cfg, data.key)
    lineage = dict(data.meta["lineage"])
    lineage.update({"model_config": dataclasses.asdict(model_cfg), "family": family,
                    "depth": models.depth_of(hf_config), "hidden_size": int(hf_config.hidden_size),
                    "weights": model_cfg.name, "tokenizer": model_cfg.name})
    return Artifact(stage="base", key=key, uri="", meta={"parent": data.key, "lineage": lineage,
                                                          "config": dataclasses.asdict(model_cfg)})


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
            found = self.store.find(stage, key)
            if found is None:
                raise FileNotFoundError(f"artifact {ref} is missing under {self.store.root}")
            return str(Path(self.store.local_path(found), *sub))
        return ref

    def optional(self, name: str) -> str | None:
        """A lineage entry resolved to a local path, or None when the chain has none."""
        ref = self.parent.meta["lineage"].get(name)
        return self.resolve(ref) if ref else None

    def tokenizer(self):
        return models.load_tokenizer(self.resolve(self.parent.lineage("tokenizer")), self.family)

    def load_weights(self, seed: int):
        """Plain HF model from the parent's weights.  Seeded: a new seq-cls head is random."""
        torch.manual_seed(seed)
        return models.load_model(self.resolve(self.parent.lineage("weights")), self.family,
                                 self.model_cfg.dtype).to(models.device())

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
        data = self.store.find("data", self.parent.lineage("data_key"))
        return read_split(self.store, data, split)

    def encoded(self, split: str, tok) -> Encoded:
        return encode(self.rows(split), tok, self.parent.lineage("format"), self.family,
                      self.model_cfg.max_length)

    def answer_ids(self, tok):
        return models.answer_token_ids(tok) if self.family == "causal-lm" else None


def artifact_ref(stage: str, key: str) -> str:
    return f"artifact:{stage}/{key}"
