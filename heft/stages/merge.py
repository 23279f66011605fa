"""Merge: fold the LoRA update into the base weights, so ReFT sees a plain HF model.

``merge_and_unload(safe_merge=True)`` computes W + (alpha/r) B A into a copy and
refuses NaN/inf before replacing W.  We also check that the merged model gives the same
outputs as base + adapter on a few validation rows (for a causal LM the logits over the
whole vocabulary at every token, for an encoder every token's last hidden state and the
class scores: not only the answer logits), and record the largest difference in the
artifact's metrics.

The check is relative to the scores' scale, max(1, max|score|): the adapter path adds a
float32 LoRA product to a low-precision base matmul, the merged path rounds W + dW once to
the weights' dtype, so in bf16 the two differ by rounding that grows with the logits.
Measured by bench/merge_precision.py (largest change / scale, LoRA 1 epoch on BoolQ):
stories260K float32 7e-7, bfloat16 0.9-1.3% (1.9% on tests/test_precision.py's keyword
task), float16 0.1%; MiniLM float32 3e-7, bfloat16 0.2-0.3%.  The LoRA update itself moved
the same scores by 60% (stories) and 35% (MiniLM) of the scale: a merge that dropped or
mis-scaled it is off by that much, far above the tolerances below; the merge kept every
held-out prediction (200/200) in every measured case.
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

# largest output change allowed, as a fraction of max(1, max|output|)
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
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


def merge_lora(cfg: MergeConfig, parent: Artifact, ctx: Context) -> Built:
    if parent.stage != "lora":
        raise ValueError(f"merge needs a lora artifact, got {parent.stage!r}")
    inputs = StageInputs.of(parent, ctx.store)
    tok = inputs.tokenizer()
    enc = inputs.encoded("valid", tok)
    if not len(enc):
        enc = inputs.encoded("train", tok)
    # a small sample, the longest rows: full outputs of a causal LM are rows x tokens x vocabulary
    longest = eval_batches(enc, CHECK_ROWS)[-1]
    batch = to_device(collate(enc, longest, tok.pad_token_id), models.device())
    peft_model, _ = load_for_eval(inputs)

    def outputs(model):
        return full_outputs(model, batch, inputs.family, inputs.model_cfg.pooling, inputs.answer_ids(tok))
    with torch.no_grad():  # float32 matmuls: the check compares weights, not autocast rounding
        before = outputs(peft_model)
        merged = peft_model.merge_and_unload(safe_merge=cfg.safe_merge)
        after = outputs(merged)
    diff = float((before - after).abs().max())
    relative = diff / max(1.0, float(before.abs().max()))
    dtype = inputs.model_cfg.dtype
    if relative > TOLERANCE[dtype]:
        raise FloatingPointError(f"merge changed the model's outputs by {diff:.3g} ({relative:.2%} of their "
                                 f"scale; {dtype} allows {TOLERANCE[dtype]:.2%}); refusing to save")
    merged.save_pretrained(str(ctx.out / "model"), safe_serialization=True)
    tok.save_pretrained(str(ctx.out / "model"))
    ref = artifact_ref("merge", ctx.step.key)
    metrics = {"merge_max_abs_diff": diff, "merge_rel_diff": relative, "merge_checked_values": before.numel()}
    return Built(metrics, lineage={"weights": ref + "/model", "tokenizer": ref + "/model", "gguf_file": "",
                          "adapter": None, "head": None})  # adapter and head are now in the weights
