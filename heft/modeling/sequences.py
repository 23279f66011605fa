"""A causal LM on prompt + continuation: the continuation's log-probability, and its LM loss.

Token t of the continuation is predicted by the hidden state at the position before it, so a
continuation starting at prompt length p with c tokens is read at positions p-1 .. p+c-2.  Only
those positions go through the LM head: (B, c, V) logits instead of (B, T, V), which for a
long prompt and a 49k vocabulary is most of the memory of a step.

* ``continuation_logprobs``: each sequence's summed log-probability of its continuation and its
  token count (choice scoring: lm-evaluation-harness's ``acc`` compares the sums);
* ``lm_loss``: the mean cross-entropy over every continuation token of the batch (the prompt's
  tokens are not in the loss), as Hugging Face's causal-LM loss with the prompt labelled -100.
"""
from __future__ import annotations

import torch

from heft.data.batching import host_to_device
from heft.modeling.models import model_mask, unwrap


def continuation_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probabilities (B,), tokens (B,)) of each sequence's continuation, float32.
    ``batch`` comes from collate: right-padded, ``prompt_len`` and ``length`` on the CPU."""
    ids = batch["input_ids"]
    base = unwrap(model)
    hidden = getattr(base, base.base_model_prefix)(input_ids=ids,
                                                   attention_mask=model_mask(model, batch)).last_hidden_state
    plen, length = batch["prompt_len"], batch["length"]
    width = max(1, int((length - plen).max()))            # the longest continuation (a CPU read)
    steps = torch.arange(width)
    read = (plen[:, None] - 1 + steps).clamp(max=ids.shape[1] - 2)   # positions that predict
    valid = steps[None, :] < (length - plen)[:, None]
    read, valid = host_to_device(read, ids.device), host_to_device(valid, ids.device)
    states = hidden.gather(1, read[..., None].expand(-1, -1, hidden.shape[-1]))
    logits = base.get_output_embeddings()(states).float()
    targets = ids.gather(1, read + 1)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    logp = logp * valid
    return logp.sum(1), valid.sum(1)


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the batch's continuation tokens (the LM loss on the answer only)."""
    total, tokens = continuation_logprobs(model, batch)
    return -total.sum() / tokens.sum().clamp(min=1)
