"""Merge: fold the LoRA update into the base weights, so ReFT sees a plain HF model.

``merge_and_unload(safe_merge=True)`` computes W + (alpha/r) B A into a copy and refuses
NaN/inf before replacing W.  The merged model must then give the outputs of base + adapter on
a few validation rows (a causal LM's logits over the whole vocabulary at every token; an
encoder's last hidden states and class scores), and the largest difference is recorded.

The check is independent of the merge: the reference is the adapter's own forward pass on its
own loaded copy, taken before anything is merged; the merge is done on a second copy
(``merged_copy``), so a merge that mis-scales the update cannot move its own reference.

It runs in float32 whatever the model's dtype, so base + adapter and W + dW differ by float32
rounding alone while a lost or mis-scaled update is off by tens of percent; the tolerance
(1e-3 of the outputs' scale) sits between the two.  In bf16, rounding alone moves a deep LM's
outputs past any tolerance that would still catch a broken merge.  Only then are the merged
weights rounded once to the configured dtype, and what that rounding does is recorded
(``merge_dtype_rounding``), not judged.  Measurements: docs/benchmarks.md, section 9.
"""
from __future__ import annotations

import torch

from heft.config import MergeConfig
from heft.data.batching import collate, eval_batches, to_device
from heft.modeling import models
from heft.stages import Context
from heft.stages.evaluate import load_for_eval
from heft.stages.inputs import StageInputs, artifact_ref
from heft.store.artifacts import Artifact, Built

# largest output change allowed, in float32, as a fraction of max(1, max|output|)
TOLERANCE = 1e-3
CHECK_ROWS = 4


def full_outputs(model, batch: dict, family: str, pooling: str, answer_ids) -> torch.Tensor:
    """Every number the merged model must reproduce on ``batch``: for a causal LM the logits
    over the whole vocabulary at every real token, for an encoder the last hidden state at
    every real token and the two class scores; one flat float32 vector."""
    real = batch["attention_mask"].bool()
    inner = models.unwrap(model)
    if family == "causal-lm":
        logits = inner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[real].float().flatten()
    encoder = getattr(inner, inner.base_model_prefix)
    hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch.get("token_type_ids")).last_hidden_state
    scores, _ = models.class_scores(model, batch, family, pooling, answer_ids)
    return torch.cat([hidden[real].float().flatten(), scores.float().flatten()])


def merged_copy(inputs: StageInputs, safe_merge: bool):
    """A freshly loaded base + adapter with the update folded into the weights, in float32."""
    peft_model, _ = load_for_eval(inputs)
    return peft_model.float().merge_and_unload(safe_merge=safe_merge)


def merge_lora(cfg: MergeConfig, parent: Artifact, ctx: Context) -> Built:
    if parent.stage != "lora":
        raise ValueError(f"merge needs a lora artifact, got {parent.stage!r}")
    inputs = StageInputs.of(parent, ctx.store)
    tok = inputs.tokenizer()
    enc = inputs.sequences("valid", tok)
    if not len(enc):
        enc = inputs.sequences("train", tok)
    # a small sample, the longest rows: full outputs of a causal LM are rows x tokens x vocabulary
    longest = eval_batches(enc, CHECK_ROWS)[0]
    batch = to_device(collate(enc, longest, tok.pad_token_id), models.device())

    def outputs(model):
        return full_outputs(model, batch, inputs.family, inputs.model_cfg.pooling, inputs.answer_ids(tok))
    with torch.no_grad():  # float32 weights and matmuls: the check sees the merge's arithmetic alone
        adapted, _ = load_for_eval(inputs)
        before = outputs(adapted.float())  # base + adapter, unmerged: the reference
        del adapted  # one model in memory at a time
        merged = merged_copy(inputs, cfg.safe_merge)
        after = outputs(merged)
        scale = max(1.0, float(before.abs().max()))
        diff = float((before - after).abs().max())
        relative = diff / scale
        if relative > TOLERANCE:
            raise FloatingPointError(f"merge changed the model's outputs by {diff:.3g} ({relative:.2%} of "
                                     f"their scale; float32 allows {TOLERANCE:.2%}); refusing to save")
        dtype = inputs.model_cfg.dtype
        merged.to(models.TORCH_DTYPES[dtype])  # W + dW rounded once to the stored dtype
        rounding = 0.0 if dtype == "float32" else float((outputs(merged) - after).abs().max()) / scale
    merged.save_pretrained(str(ctx.out / "model"), safe_serialization=True)
    tok.save_pretrained(str(ctx.out / "model"))
    ref = artifact_ref("merge", ctx.step.key)
    metrics = {"merge_max_abs_diff": diff, "merge_rel_diff": relative, "merge_checked_values": before.numel(),
               "merge_dtype_rounding": rounding}
    return Built(metrics, lineage={"weights": ref + "/model", "tokenizer": ref + "/model", "gguf_file": "",
                          "adapter": None, "head": None})  # adapter and head are now in the weights
