"""Stage 1: LoRA in weight space (peft), W' = W + (alpha/r) B A on the target modules.

Its parent is the base model (HEFT, LoRA-only) or, for the reverse order ReFT -> LoRA, a
ReFT artifact trained on the base model: then that intervention stays attached, frozen,
while the adapter trains (and a seq-cls head trained by ReFT is the head LoRA continues).
"""
from __future__ import annotations

import json

from heft.config import ConfigError, LoraConfig
from heft.modeling import models
from heft.modeling.training import train
from heft.stages import Context
from heft.stages.inputs import StageInputs, artifact_ref
from heft.store.artifacts import Artifact, Built
from heft.store.checkpoints import EpochCheckpoints

# Attention projections per architecture (the paper adapts q/k/v/o on Llama).
DEFAULT_TARGETS = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "gpt2": ("c_attn", "c_proj"),
    "bert": ("query", "key", "value", "dense"),
}


def target_modules(cfg: LoraConfig, model) -> list[str]:
    """The configured targets, checked against the model's module names before training."""
    targets = list(cfg.target_modules) or list(DEFAULT_TARGETS.get(model.config.model_type, ()))
    if not targets:
        raise ConfigError(f"lora.target_modules is empty and there is no default for "
                          f"model_type={model.config.model_type!r}: name the modules to adapt")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()} - {""}
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ConfigError(f"lora.target_modules={unknown}: no such module in "
                          f"{type(model).__name__} (it has {sorted(n for n in names if not n.isdigit())})")
    return targets


def train_lora(cfg: LoraConfig, parent: Artifact, ctx: Context) -> Built:
    """Train a LoRA adapter on the parent's weights (base, or base + frozen ReFT); save it
    with save_pretrained."""
    from peft import LoraConfig as PeftLoraConfig, TaskType, get_peft_model
    if parent.stage not in ("base", "reft") or parent.meta["lineage"].get("adapter"):
        raise ValueError(f"lora trains on a base model or a ReFT artifact, got a {parent.stage!r} artifact")
    inputs = StageInputs.of(parent, ctx.store)
    tok = inputs.tokenizer()
    # seed, weights, adapter: one build with no other model built in between (models.LOADING),
    # so the adapter's random initial A is the same as in a run with one worker
    with models.LOADING:
        model = inputs.load_weights(cfg.seed)
        inputs.load_head(model)
        frozen = inputs.intervention()  # ReFT -> LoRA: the ReFT stage's intervention, not trained
        if frozen:
            frozen.loreft.requires_grad_(False)
        causal = inputs.family == "causal-lm"
        peft_cfg = PeftLoraConfig(
            r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
            target_modules=target_modules(cfg, model),
            # SEQ_CLS also trains and saves the new classification head (modules_to_save)
            task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS)
        model = get_peft_model(model, peft_cfg)
    if cfg.gradient_checkpointing:  # non-reentrant: no need for inputs that require grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in named if ".modules_to_save." in n]  # peft's trainable copy of the head
    groups = [{"params": [p for n, p in named if ".modules_to_save." not in n]}]
    if head:  # the new classification head starts from random: it may want a larger step
        groups.append({"params": head, "lr": cfg.head_learning_rate})
    history, resumed = train(model, groups, inputs.objective(model, tok, frozen), cfg,
                             desc="lora", progress=ctx.progress, intervention=frozen,
                             checkpoints=EpochCheckpoints(ctx.store, "lora", cfg, parent.key),
                             state=dict(named))
    metrics = {"trainable_params": sum(p.numel() for _, p in named), "resumed_from_epoch": resumed}
    if history:
        metrics.update({f"final_{k}": v for k, v in history[-1].items()})
    model.save_pretrained(str(ctx.out / "adapter"))
    (ctx.out / "history.json").write_text(json.dumps(history, indent=2))
    return Built(metrics, lineage={"adapter": artifact_ref("lora", ctx.step.key) + "/adapter"})
