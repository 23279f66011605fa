"""Batched scoring: one forward pass per batch gives each row's (false, true) scores (label
tasks, ``predict``), or each sequence's continuation log-probability (choice tasks,
``score_choices``).

A causal LM is scored by the next-token logits of ' false' and ' true' at its last prompt
token (no generate(): one pass, no sampling, no parsing); an encoder by its 2-label head.
The intervention, when there is one, is attached for the whole pass and told each batch's
positions.  Evaluation, validation during training, the merge check and ``heft.load`` all
score through ``predict``.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from heft.data.batching import Encoded, collate, eval_batches, to_device
from heft.modeling import models
from heft.modeling.loreft import Intervention
from heft.modeling.precision import adapters_follow_autocast, autocast
from heft.modeling.sequences import continuation_logprobs
from heft.progress import check_stop


@torch.no_grad()
def predict(model, enc: Encoded, batch_size: int, *, family: str, pooling: str, answer_ids,
            pad_id: int, intervention: Intervention | None = None, desc: str = "eval",
            return_scores: bool = False, precision: str = "off"):
    """Predicted labels (N,) in the order of ``enc`` (and the (N, 2) scores if asked);
    ``precision`` 'bfloat16' runs the forward passes under bf16 autocast (CPU or CUDA).  The scores
    stay on the device until the last batch: one host read per pass, not one per batch."""
    was_training = model.training
    model.eval()
    layers = models.transformer_layers(model) if intervention else None
    dev = next(model.parameters()).device
    answers = models.answer_index(answer_ids, dev) if answer_ids is not None else None
    rows, scores = [], []
    with intervention.attached(layers) if intervention else nullcontext(), \
            adapters_follow_autocast(model, precision):
        for idx in tqdm(eval_batches(enc, batch_size), desc=desc, unit="batch", leave=False, disable=None):
            check_stop()  # an interrupted grid stops its scoring threads between batches
            batch = collate(enc, idx, pad_id)
            if intervention:
                intervention.set_batch(batch)
            with autocast(precision, dev.type):
                batch_scores, _ = models.class_scores(model, to_device(batch, dev), family, pooling, answers)
            rows.append(batch["index"])
            scores.append(batch_scores.float())
    model.train(was_training)
    scores_out = torch.zeros(len(enc), 2)
    if rows:
        scores_out[torch.cat(rows)] = torch.cat(scores).cpu()
    preds = scores_out.argmax(1)
    return (preds, scores_out) if return_scores else preds


@torch.no_grad()
def score_choices(model, enc: Encoded, rows: int, batch_size: int, *, pad_id: int,
                  intervention: Intervention | None = None, desc: str = "choices",
                  precision: str = "off") -> list[list[float]]:
    """Each row's summed log-probability of each of its choices after its prompt (``enc``: one
    sequence per (row, choice), heft/data/batching.py encode_sequences), the intervention on
    the prompt positions; lm-evaluation-harness's per-choice log-likelihood."""
    was_training = model.training
    model.eval()
    layers = models.transformer_layers(model) if intervention else None
    dev = next(model.parameters()).device
    order, totals = [], []
    with intervention.attached(layers) if intervention else nullcontext(), \
            adapters_follow_autocast(model, precision):
        for idx in tqdm(eval_batches(enc, batch_size), desc=desc, unit="batch", leave=False, disable=None):
            check_stop()
            batch = collate(enc, idx, pad_id)
            if intervention:
                intervention.set_batch(batch)
            with autocast(precision, dev.type):
                total, _ = continuation_logprobs(model, to_device(batch, dev))
            order.append(batch["index"])
            totals.append(total.float())
    model.train(was_training)
    sums = torch.zeros(len(enc))
    if order:
        sums[torch.cat(order)] = torch.cat(totals).cpu()   # one host read per pass
    out: list[list[float]] = [[] for _ in range(rows)]
    for i, owner in enumerate(enc.owners):
        out[owner].append(float(sums[i]))
    return out
