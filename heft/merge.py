"""Stage 2: fold the LoRA update into the base weights, so ReFT sees a plain HF model.

``merge_and_unload(safe_merge=True)`` computes W + (alpha/r) B A into a copy and
refuses NaN/inf before replacing W.  We also check that the merged model scores a
validation batch like base + adapter did, and record the largest difference in the
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

from heft import models
from heft.artifacts import Artifact, ArtifactStore, stage_key
from heft.batching import collate, eval_batches, to_device
from heft.config import MergeConfig
from heft.evaluate import load_for_eval
from heft.lineage import StageInputs, artifact_ref

# largest score change allowed, as a fraction of max(1, max|score|)
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}



def run_merge(cfg: MergeConfig, parent: Artifact, store: ArtifactStore) -> Artifact:
    if parent.stage != "lora":
        raise ValueError(f"merge needs a lora artifact, got {parent.stage!r}")
    key = stage_key("merge", cfg, parent.key)
    if (found := store.find("merge", key)) is not None:
        return found
    inputs = StageInputs.of(parent, store)
    tok = inputs.tokenizer()
    enc = inputs.encoded("valid", tok)
    if not len(enc):
        enc = inputs.encoded("train", tok)
    batch = to_device(collate(enc, eval_batches(enc, 16)[-1], tok.pad_token_id), models.device())  # longest rows
    peft_model, _ = load_for_eval(inputs)
    score = lambda m: models.class_scores(m, batch, inputs.family, inputs.model_cfg.pooling,
                                          inputs.answer_ids(tok))[0]
    with torch.no_grad():
        before = score(peft_model)
        merged = peft_model.merge_and_unload(safe_merge=cfg.safe_merge)
        after = score(merged)
    diff = float((before - after).abs().max())
    relative = diff / max(1.0, float(before.abs().max()))
    dtype = inputs.model_cfg.dtype
    if relative > TOLERANCE[dtype]:
        raise FloatingPointError(f"merge changed the model's scores by {diff:.3g} ({relative:.2%} of their "
                                 f"scale; {dtype} allows {TOLERANCE[dtype]:.2%}); refusing to save")
    with store.build("merge", key) as tmp:
        merged.save_pretrained(str(tmp / "model"), safe_serialization=True)
        tok.save_pretrained(str(tmp / "model"))
        ref = artifact_ref("merge", key)
        return store.publish(tmp, "merge", key, cfg, parent, {"merge_max_abs_diff": diff,
                                                                      "merge_rel_diff": relative},
                             lineage={"weights": ref + "/model", "tokenizer": ref + "/model",
                                      "adapter": None, "head": None})  # both now in the weights
