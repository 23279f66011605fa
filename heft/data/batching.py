"""Tokenize once, then batch by length with dynamic padding.

BoolQ passages range from a few dozen to several hundred tokens; padding every
batch to max_length would waste most of the compute.  Training batches are drawn
from length-sorted "mega-batches" of 50 batches (as HF's group_by_length does), so
each step still sees a random sample while its rows have similar lengths.

Over-long questions, the stated rule: in the passage format a question keeps at most
``max_length // 2`` tokens (``question_cap``); a longer one is cut to its first that many
tokens, with a warning, and then the passage is truncated to fit as before (an encoder
truncates the passage's end, ``only_second``; a causal LM's prompt is truncated from the left,
i.e. the passage's start).  So every prompt reads the question's start *and* some passage.
Without the rule an encoder's tokenizer failed mid-stage on a question longer than
max_length ("Sequence to truncate too short"), and a causal LM silently dropped the whole
passage.  Rows whose questions fit are encoded exactly as before.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import torch

from heft.data.prompts import prompt

MEGABATCH = 50
log = logging.getLogger(__name__)


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]
    cut_questions: list[int] = field(default_factory=list)  # rows whose question was cut (see above)

    def __len__(self) -> int:
        return len(self.labels)


def question_cap(max_length: int) -> int:
    """The most tokens a question keeps in the passage format: half of max_length."""
    return max(1, max_length // 2)


def cut_questions(questions: list[str], tok, max_length: int) -> dict[int, str]:
    """{row: the question cut to its first ``question_cap`` tokens} for each question longer
    than that (tokens counted without special tokens); the cut is made in the text, at the
    end of the last kept token, so the kept part tokenizes as it did inside the question."""
    cap = question_cap(max_length)
    fast = getattr(tok, "is_fast", False)
    enc = tok(questions, add_special_tokens=False, return_offsets_mapping=fast)
    out = {}
    for i, ids in enumerate(enc["input_ids"]):
        if len(ids) > cap:
            out[i] = (questions[i][:enc["offset_mapping"][i][cap - 1][1]] if fast
                      else tok.convert_tokens_to_string(tok.convert_ids_to_tokens(ids[:cap])))
    return out


def encode(rows: list[dict], tok, fmt: str, family: str, max_length: int) -> Encoded:
    causal = family == "causal-lm"
    cut = cut_questions([r["question"] for r in rows], tok, max_length) if fmt == "passage" else {}
    if cut:
        log.warning("%d of %d rows: question longer than %d tokens (half of max_length=%d), cut to its "
                    "first %d tokens so that the passage is read too (rows %s)", len(cut), len(rows),
                    question_cap(max_length), max_length, question_cap(max_length),
                    ", ".join(map(str, sorted(cut)[:5])) + (", ..." if len(cut) > 5 else ""))
        rows = [dict(r, question=cut[i]) if i in cut else r for i, r in enumerate(rows)]
    texts = [prompt(r, fmt, causal) for r in rows]
    first = [t[0] for t in texts]
    pairs = [t[1] for t in texts]
    if all(p is not None for p in pairs):
        enc = tok(first, pairs, truncation="only_second", max_length=max_length)
    else:
        enc = tok(first, truncation=True, max_length=max_length)
    return Encoded(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"),
                   labels=[int(r["label"]) for r in rows], cut_questions=sorted(cut))


def collate(enc: Encoded, idx: list[int], pad_id: int) -> dict:
    width = max(len(enc.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    types = torch.zeros((len(idx), width), dtype=torch.long) if enc.token_type_ids else None
    for row, i in enumerate(idx):
        n = len(enc.input_ids[i])
        ids[row, :n] = torch.tensor(enc.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(enc.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask,
             "labels": torch.tensor([enc.labels[i] for i in idx]), "index": torch.tensor(idx)}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def train_batches(enc: Encoded, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Index lists for one epoch: random mega-batches, each sorted by length, batches shuffled."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(enc)))
    rng.shuffle(order)
    batches = []
    size = batch_size * MEGABATCH
    for start in range(0, len(order), size):
        mega = sorted(order[start:start + size], key=lambda i: len(enc.input_ids[i]))
        batches += [mega[j:j + batch_size] for j in range(0, len(mega), batch_size)]
    rng.shuffle(batches)
    return batches


def eval_batches(enc: Encoded, batch_size: int) -> list[list[int]]:
    """Length-sorted batches (order does not matter for scoring: results are keyed by index)."""
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    return [order[j:j + batch_size] for j in range(0, len(order), batch_size)]


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}
