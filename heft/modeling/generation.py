"""Greedy decoding in batches with the KV cache, the intervention on the prompt only.

pyreft generates with the intervention on the prompt positions: the edited hidden states change
the keys and values every later token attends to, and nothing else is edited.  Here that is
exact and cheap:
* the prompts are left-padded, so every row's prompt ends at the last column and decoding starts
  together; ``position_ids`` count real tokens only, so a padded row sees the same positions as
  the row alone (the attention mask hides the padding);
* the prefill pass runs with the intervention at each row's prompt positions (shifted by its
  padding) and fills the KV cache with the edited keys and values;
* every decoding step feeds one new token per row against that cache with the intervention
  cleared: positions are never recounted on the growing sequence, and nothing is edited twice.
Without the cache, each step would recompute the prompt; a step that intervened on "the last
token" would move the edit onto the generated text (tests/test_generation.py checks both).

A row stops at the end-of-sequence token or once its decoded text contains ``stop``; the batch
stops when every row has.  Each step reads the new tokens on the host (the stop check needs
them): generation is bound by that sync and by the model, not by Python.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from heft.data.batching import Encoded, collate, eval_batches
from heft.modeling import models
from heft.modeling.loreft import Intervention
from heft.modeling.precision import autocast
from heft.progress import check_stop


def cut(text: str, stop: str) -> str:
    """The generation up to (not including) the stop text."""
    return text.split(stop, 1)[0] if stop and stop in text else text


def generate(model, tok, enc: Encoded, *, max_new_tokens: int, stop: str = "", batch_size: int = 16,
             intervention: Intervention | None = None, precision: str = "off",
             desc: str = "generate") -> list[str]:
    """The greedy continuation of each prompt in ``enc`` (in its order), cut at ``stop``."""
    tokens = generate_tokens(model, tok, enc, max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size,
                             intervention=intervention, precision=precision, desc=desc)
    return [cut(tok.decode(t, skip_special_tokens=True), stop) for t in tokens]


@torch.no_grad()
def generate_tokens(model, tok, enc: Encoded, *, max_new_tokens: int, stop: str = "", batch_size: int = 16,
                    intervention: Intervention | None = None, precision: str = "off",
                    desc: str = "generate") -> list[list[int]]:
    """The greedy new tokens of each prompt in ``enc`` (in its order), up to the end-of-sequence
    token, the token that completes ``stop``, or ``max_new_tokens``."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[list[int]] = [[] for _ in range(len(enc))]
    layers = models.transformer_layers(model) if intervention else None
    with intervention.attached(layers) if intervention else nullcontext():
        for idx in tqdm(eval_batches(enc, batch_size), desc=desc, unit="batch", leave=False, disable=None):
            for i, tokens in zip(idx, _generate_batch(model, tok, enc, idx, pad, dev, max_new_tokens, stop,
                                                      intervention, precision)):
                out[i] = tokens
    model.train(was_training)
    return out


def _generate_batch(model, tok, enc, idx, pad, dev, max_new_tokens, stop, intervention,
                    precision) -> list[list[int]]:
    batch = collate(enc, idx, pad, left=True)
    mask = batch["attention_mask"].to(dev)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)   # real tokens only: padding does not shift them
    if intervention:
        intervention.set_batch(batch, reuse_prefix=False)  # prompt positions, shifted by each row's padding
    with autocast(precision, dev.type):
        step = model(input_ids=batch["input_ids"].to(dev), attention_mask=mask, position_ids=positions,
                     use_cache=True, logits_to_keep=1)
    if intervention:
        intervention.clear()                         # decoding steps: the cache carries the edit
    cache, last = step.past_key_values, positions[:, -1:]
    tokens: list[list[int]] = [[] for _ in idx]
    done = [False] * len(idx)
    for _ in range(max_new_tokens):
        check_stop()  # an interrupted run stops between decode steps
        nxt = step.logits[:, -1].argmax(-1)
        for row, t in enumerate(nxt.tolist()):       # the one host read per step
            if done[row]:
                continue
            if t == tok.eos_token_id:
                done[row] = True
                continue
            tokens[row].append(t)
            if stop and stop in tok.decode(tokens[row], skip_special_tokens=True):
                done[row] = True
        if all(done):
            break
        mask = torch.cat([mask, mask.new_ones(len(idx), 1)], dim=1)
        last = last + 1
        with autocast(precision, dev.type):
            step = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last,
                         past_key_values=cache, use_cache=True)
    return tokens
