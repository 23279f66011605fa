"""Tokenize once, then batch by length with dynamic padding.

BoolQ passages range from a few dozen to several hundred tokens; padding every
batch to max_length would waste most of the compute.  Training batches are drawn
from length-sorted "mega-batches" of 50 batches (as HF's group_by_length does), so
each step still sees a random sample while its rows have similar lengths.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from heft.data.prompts import prompt

MEGABATCH = 50


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def encode(rows: list[dict], tok, fmt: str, family: str, max_length: int) -> Encoded:
    causal = family == "causal-lm"
    texts = [prompt(r, fmt, causal) for r in rows]
    first = [t[0] for t in texts]
    pairs = [t[1] for t in texts]
    if all(p is not None for p in pairs):
        enc = tok(first, pairs, truncation="only_second", max_length=max_length)
    else:
        enc = tok(first, truncation=True, max_length=max_length)
    return Encoded(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"),
                   labels=[int(r["label"]) for r in rows])


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
