"""Evaluate: accuracy on the held-out split of whatever model the parent's lineage names,
with the intervention applied (batched two-way scoring, heft/modeling/scoring.py).
"""
from __future__ import annotations

import json

import torch

from heft.config import EvalConfig
from heft.modeling import models
from heft.modeling.scoring import predict
from heft.stages import Context
from heft.stages.inputs import StageInputs, artifact_ref
from heft.stats import wilson_interval
from heft.store.artifacts import Artifact, Built


def summarize(preds: torch.Tensor, labels: list[int]) -> dict:
    gold = torch.tensor(labels)
    n, correct = len(labels), int((preds == gold).sum())
    low, high = wilson_interval(correct, n)
    positives = int(gold.sum())
    return {"accuracy": correct / n, "correct": correct, "n": n, "ci95_low": low, "ci95_high": high,
            "majority_rate": max(positives, n - positives) / n,
            "predicted_true_rate": int(preds.sum()) / n}  # a count: exactly 0 or 1 for a constant predictor


def load_for_eval(inputs: StageInputs, seed: int = 0):
    """(model, intervention or None) for any artifact that ends a pipeline: weights, then the
    ReFT head, then the LoRA adapter, then the intervention, as the lineage names them."""
    from peft import PeftModel
    model = inputs.load_weights(seed=inputs.parent.meta.get("config", {}).get("seed", seed))
    inputs.load_head(model)
    if (adapter := inputs.optional("adapter")):
        with models.LOADING:  # peft builds the adapter's layers: one model built at a time
            model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), inputs.intervention()


def evaluate(cfg: EvalConfig, parent: Artifact, ctx: Context) -> Built:
    """Accuracy of the parent's model on the held-out split; predictions saved."""
    inputs = StageInputs.of(parent, ctx.store)
    tok = inputs.tokenizer()
    enc = inputs.encoded("eval", tok)
    model, intervention = load_for_eval(inputs)
    preds, scores = predict(model, enc, cfg.batch_size, family=inputs.family,
                            pooling=inputs.model_cfg.pooling, answer_ids=inputs.answer_ids(tok),
                            pad_id=tok.pad_token_id, intervention=intervention,
                            desc=f"evaluate {parent.stage}", return_scores=True, precision=inputs.precision)
    with open(ctx.out / "predictions.jsonl", "w") as f:
        for i in range(len(enc)):
            row = {"index": i, "label": enc.labels[i], "pred": int(preds[i]),
                   "score_false": float(scores[i, 0]), "score_true": float(scores[i, 1])}
            f.write(json.dumps(row) + "\n")
    # which artifact was evaluated: heft.load serves exactly this model
    return Built(summarize(preds, enc.labels), lineage={"evaluated": artifact_ref(parent.stage, parent.key)})
