"""Stage 2: LoReFT on the frozen (merged or base) model.

Only the intervention (R, W, b: 2*r*d + r numbers) is trained, plus for an encoder the
2-label head (as LoReFT does on GLUE); every model weight is frozen.  Because nothing
below the intervention layer requires grad, autograd builds no graph there: the
backward pass only runs through the blocks above ``layer``.
"""
from __future__ import annotations

import json
import logging
import time

import torch
from safetensors.torch import save_file

from heft.config import ConfigError, ReftConfig
from heft.modeling import models
from heft.data.batching import encode_sequences
from heft.modeling.loreft import Intervention, LoReFT
from heft.modeling.prefix import PrefixCache, kept_in_eval, prefix_modules
from heft.modeling.scoring import predict, score_choices
from heft.modeling.training import train
from heft.stages import Context
from heft.stages.inputs import StageInputs, artifact_ref
from heft.store.artifacts import Artifact, Built
from heft.store.checkpoints import EpochCheckpoints

log = logging.getLogger(__name__)


def check_reft_config(cfg: ReftConfig, depth: int, hidden_size: int) -> None:
    """Reject a layer or rank the model cannot take, before any weights are loaded."""
    if not 0 <= cfg.layer < depth:
        raise ConfigError(f"reft.layer={cfg.layer}: the model has {depth} blocks, "
                          f"so it must be in [0, {depth - 1}]")
    if not 1 <= cfg.rank <= hidden_size:
        raise ConfigError(f"reft.rank={cfg.rank}: must be in [1, hidden size {hidden_size}]")


def head_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if n.split(".")[0] in models.HEAD_MODULES}


def scores(inputs: StageInputs, model, tok, enc, intervention) -> torch.Tensor:
    """What the intervention moves: a label task's two class scores, else each validation row's
    log-probability of its gold continuation."""
    if inputs.task.kind == "label":
        _, out = predict(model, enc, 64, family=inputs.family, pooling=inputs.model_cfg.pooling,
                         answer_ids=inputs.answer_ids(tok), pad_id=tok.pad_token_id,
                         intervention=intervention, return_scores=True, desc="reft effect",
                         precision=inputs.precision)
        return out
    sums = score_choices(model, enc, len(enc), 64, pad_id=tok.pad_token_id, intervention=intervention,
                         desc="reft effect", precision=inputs.precision)
    return torch.tensor([s[0] for s in sums])


def prefix_cache(cfg: ReftConfig, inputs: StageInputs, model, tok, objective, valid, layer: int):
    """The frozen prefix's output for the rows read more than once (heft/modeling/prefix.py): the
    validation sequences (each epoch's validation and the effect pass below), and the training
    rows when there are 2 or more epochs and the prefix has no active dropout in training.  None
    for an architecture without the plumbing."""
    cache = PrefixCache.for_model(model, layer)
    if cache is None:
        return None
    start = time.perf_counter()
    task = inputs.task
    if task.kind == "choice":  # validation scores every choice, the effect pass the gold one
        rows = inputs.rows("valid")
        cache.fill(encode_sequences(rows, tok, task, inputs.model_cfg.max_length, all_choices=True),
                   tok.pad_token_id, inputs.precision)
    elif task.kind == "label":  # generation (validation of a generate task) runs every block
        cache.fill(valid, tok.pad_token_id, inputs.precision)
    if cfg.epochs >= 2 and (cfg.prefix_dropout is False or not cache.random):
        cache.fill(objective.train, tok.pad_token_id, inputs.precision)
    elif cfg.epochs >= 2:
        log.info("reft: the prefix has dropout in training (reft.prefix_dropout=true): training steps run "
                 "every block; reft.prefix_dropout=false would let them skip blocks 0..%d", layer)
    log.info("reft: prefix cache of %d sequences, %.0f MB, in %.1f s", len(cache.spans), cache.megabytes,
             time.perf_counter() - start)
    return cache


def train_reft(cfg: ReftConfig, parent: Artifact, ctx: Context) -> Built:
    if parent.stage not in ("merge", "base") or parent.meta["lineage"].get("intervention"):
        raise ValueError(f"reft trains on a merged or base model without an intervention, "
                         f"got a {parent.stage!r} artifact")
    inputs = StageInputs.of(parent, ctx.store)
    check_reft_config(cfg, inputs.depth, inputs.hidden_size)
    tok = inputs.tokenizer()
    model = inputs.load_weights(cfg.seed)
    model.requires_grad_(False)
    with models.LOADING:  # seed, then the random R and W, with no other model built in between
        torch.manual_seed(cfg.seed)
        # float32 on any model dtype (heft/modeling/loreft.py: no bf16 orgqr, bf16 steps rounded away)
        loreft = LoReFT(inputs.hidden_size, cfg.rank, cfg.dropout).to(models.device())
    intervention = Intervention(loreft, cfg.layer, cfg.positions)
    groups = [{"params": list(loreft.parameters())}]
    head = head_parameters(model) if inputs.family == "seq-cls" and cfg.train_head else {}
    for p in head.values():
        p.requires_grad_(True)
    if head:
        groups.append({"params": list(head.values()), "lr": cfg.head_learning_rate})
    # checkpoint state: the intervention's parameters *and* buffers (the orthogonal map's
    # base), plus the head; all live tensors, so restoring copies into them
    state = {f"loreft.{n}": t for n, t in loreft.state_dict(keep_vars=True).items()}
    state.update({f"head.{n}": p for n, p in head.items()})
    objective = inputs.objective(model, tok, intervention)
    valid = inputs.sequences("valid", tok)
    if cfg.prefix_cache:
        intervention.prefix = prefix_cache(cfg, inputs, model, tok, objective, valid, intervention.layer)
    # reft.prefix_dropout=false: the frozen embeddings and blocks up to the layer stay in eval mode
    with kept_in_eval([] if cfg.prefix_dropout else prefix_modules(model, intervention.layer)):
        history, resumed = train(model, groups, objective, cfg, desc="reft", intervention=intervention,
                                 progress=ctx.progress, state=state,
                                 checkpoints=EpochCheckpoints(ctx.store, "reft", cfg, parent.key))
    loreft.eval()
    metrics = {"trainable_params": sum(p.numel() for g in groups for p in g["params"]),
               "resumed_from_epoch": resumed,
               "rotation_orthonormality_error": loreft.orthonormality_error()}
    if len(valid):  # how much the trained intervention moves the scores (0 = a dead intervention)
        with_iv, without = (scores(inputs, model, tok, valid, iv) for iv in (intervention, None))
        metrics["intervention_mean_abs_score_change"] = float((with_iv - without).abs().mean())
    if intervention.prefix:
        metrics["prefix_cache_mb"] = intervention.prefix.megabytes
        metrics["prefix_cache_batches"] = intervention.prefix.hits   # batches that skipped the prefix
        log.info("reft: prefix cache %.0f MB, %d batches served from it, %d computed in full",
                 intervention.prefix.megabytes, intervention.prefix.hits, intervention.prefix.misses)
        intervention.prefix = None   # free it before the files are written
    if history:
        metrics.update({f"final_{k}": v for k, v in history[-1].items()})
    intervention.save(ctx.out)
    if head:
        save_file({n: p.detach().contiguous() for n, p in head.items()}, str(ctx.out / "head.safetensors"))
    (ctx.out / "history.json").write_text(json.dumps(history, indent=2))
    ref = artifact_ref("reft", ctx.step.key)
    return Built(metrics, lineage={"intervention": ref, "head": ref + "/head.safetensors" if head else None})
