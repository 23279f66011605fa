"""Base stage: record which pretrained model the chain starts from.

The artifact is its meta.json: the model config, the family, depth and hidden size read
from the model's own config, and the weights' fingerprint that is part of its key (a folder
digest or a hub commit, heft/fingerprints.py).  Every later stage reads the model
description from here instead of opening the model config again.

Weights are not copied, except from a GGUF file: transformers de-quantizes GGUF on every
load, which takes minutes where a safetensors folder takes a second (docs/benchmarks.md), so
the base stage does it once and keeps the float weights and tokenizer as an ordinary Hugging
Face folder that later stages read.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from heft.config import ModelConfig
from heft.modeling import models
from heft.modeling.names import resolve_name
from heft.stages import Context
from heft.stages.inputs import artifact_ref
from heft.store.artifacts import Artifact, Built


def describe_base(cfg: ModelConfig, parent: Artifact, ctx: Context) -> Built:
    hf_config = models.auto_config(cfg.name, cfg.gguf_file)
    family = models.family_of(cfg, hf_config)
    weights = tokenizer = cfg.name
    if cfg.gguf_file:
        weights = tokenizer = artifact_ref("base", ctx.step.key) + "/model"
        convert_gguf(cfg, family, ctx.out / "model")
    return Built(metrics={}, lineage={
        "model_config": dataclasses.asdict(cfg), "family": family,
        "depth": models.depth_of(hf_config), "hidden_size": int(hf_config.hidden_size),
        "model_type": hf_config.model_type, "weights": weights, "tokenizer": tokenizer, "gguf_file": "",
        "weights_fingerprint": ctx.step.inputs["weights"]})


def convert_gguf(cfg: ModelConfig, family: str, folder: Path) -> None:
    """De-quantize ``cfg.gguf_file`` into a float Hugging Face folder (weights + tokenizer)."""
    model = models.load_model(resolve_name(cfg.name), family, "float32", cfg.gguf_file)
    tok = models.load_tokenizer(resolve_name(cfg.name), family, cfg.gguf_file)
    model.hf_quantizer = None  # save_pretrained refuses a model still marked as GGUF-quantized
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config", None)  # loading it back must not attach the GGUF quantizer
    (folder / "config.json").write_text(json.dumps(config, indent=2))
