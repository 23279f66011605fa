"""Evaluation: batched two-way scoring on the held-out split, with the intervention applied.

A causal LM is scored by one forward pass per batch comparing the next-token logits
of ' true' and ' false' at the last prompt token (no generate(): one pass, no
sampling, no parsing).  An encoder is scored by the argmax of its 2-label head.
"""
from __future__ import annotations

import json
import math
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from heft import models
from heft.artifacts import Artifact, ArtifactStore, stage_key
from heft.batching import Encoded, collate, eval_batches, to_device
from heft.config import EvalConfig
from heft.lineage import StageInputs
from heft.loreft import Intervention


@torch.no_grad()
def predict(model, enc: Encoded, batch_size: int, *, family: str, pooling: str, answer_ids,
            pad_id: int, intervention: Intervention | None = None, desc: str = "eval",
            return_scores: bool = False):
    """Predicted labels (N,) in the order of ``enc`` (and the (N, 2) scores if asked)."""
    was_training = model.training
    model.eval()
    scores_out = torch.zeros(len(enc), 2)
    layers = models.transformer_layers(model) if intervention else None
    dev = next(model.parameters()).device
    with intervention.attached(layers) if intervention else nullcontext():
        for idx in tqdm(eval_batches(enc, batch_size), desc=desc, unit="batch", leave=False):
            batch = to_device(collate(enc, idx, pad_id), dev)
            if intervention:
                intervention.set_batch(batch["attention_mask"])
            scores, _ = models.class_scores(model, batch, family, pooling, answer_ids)
            scores_out[batch["index"].cpu()] = scores.float().cpu()
    model.train(was_training)
    preds = scores_out.argmax(1)
    return (preds, scores_out) if return_scores else preds


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sane near 0/1 and for small n)."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def summarize(preds: torch.Tensor, labels: list[int]) -> dict:
    gold = torch.tensor(labels)
    n, correct = len(labels), int((preds == gold).sum())
    low, high = wilson_interval(correct, n)
    positives = int(gold.sum())
    return {"accuracy": correct / n, "correct": correct, "n": n, "ci95_low": low, "ci95_high": high,
            "majority_rate": max(positives, n - positives) / n,
            "predicted_true_rate": float(preds.float().mean())}


def load_for_eval(inputs: StageInputs, seed: int = 0):
    """(model, intervention or None) for any artifact that ends a pipeline: weights, then the
    ReFT head, then the LoRA adapter, then the intervention, as the lineage names them."""
    from peft import PeftModel
    model = inputs.load_weights(seed=inputs.parent.meta.get("config", {}).get("seed", seed))
    inputs.load_head(model)
    if (adapter := inputs.optional("adapter")):
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), inputs.intervention()


def run_evaluate(cfg: EvalConfig, parent: Artifact, store: ArtifactStore) -> Artifact:
    """Stage 5: accuracy of the parent's model on the held-out split; predictions saved."""
    key = stage_key("evaluate", cfg, parent.key)
    if (found := store.find("evaluate", key)) is not None:
        return found
    inputs = StageInputs.of(parent, store)
    tok = inputs.tokenizer()
    enc = inputs.encoded("eval", tok)
    model, intervention = load_for_eval(inputs)
    preds, scores = predict(model, enc, cfg.batch_size, family=inputs.family,
                            pooling=inputs.model_cfg.pooling, answer_ids=inputs.answer_ids(tok),
                            pad_id=tok.pad_token_id, intervention=intervention,
                            desc=f"evaluate {parent.stage}", return_scores=True)
    metrics = summarize(preds, enc.labels)
    with store.build("evaluate", key) as tmp:
        with open(tmp / "predictions.jsonl", "w") as f:
            for i in range(len(enc)):
                f.write(json.dumps({"index": i, "label": enc.labels[i], "pred": int(preds[i]),
                                    "score_false": float(scores[i, 0]), "score_true": float(scores[i, 1])}) + "\n")
        return store.publish(tmp, "evaluate", key, cfg, parent, metrics, lineage={})
