"""Tokenize once, then batch by length with dynamic padding.

BoolQ passages range from a few dozen to several hundred tokens; padding every
batch to max_length would waste most of the compute.  Training batches are drawn
from length-sorted "mega-batches" of 50 batches (as HF's group_by_length does), so
each step still sees a random sample while its rows have similar lengths.

A causal LM's sequence is its prompt, then (for training and choice scoring) a continuation
appended after one space: the gold choice or the target text plus the end-of-sequence token.
``prompt_lengths`` says where each prompt ends: the intervention's positions are counted on the
prompt only (heft/modeling/loreft.py) and the LM loss covers the continuation only
(heft/modeling/sequences.py).  Over-long sequences lose the start of their prompt (its end, the
cue the answer follows, is kept) and then the end of their continuation.

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
from heft.data.task import Task, render

MEGABATCH = 50
log = logging.getLogger(__name__)


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]                       # label: 0/1; choice: the gold index; generate: 0
    prompt_lengths: list[int] | None = None  # tokens of each prompt (None: all of the sequence)
    owners: list[int] | None = None         # the row each sequence belongs to (choice: one per choice)
    cut_questions: list[int] = field(default_factory=list)  # rows whose question was cut (see above)

    def __len__(self) -> int:
        return len(self.labels)

    def prompt_length(self, i: int) -> int:
        return self.prompt_lengths[i] if self.prompt_lengths is not None else len(self.input_ids[i])


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
    """A label task's rows: BoolQ's question and passage (prompts.py), or a templated prompt."""
    causal = family == "causal-lm"
    templated = rows and "prompt" in rows[0]  # a label task with its own template: no question field
    cut = cut_questions([r["question"] for r in rows], tok, max_length) \
        if fmt == "passage" and not templated else {}
    if cut:
        log.warning("%d of %d rows: question longer than %d tokens (half of max_length=%d), cut to its "
                    "first %d tokens so that the passage is read too (rows %s)", len(cut), len(rows),
                    question_cap(max_length), max_length, question_cap(max_length),
                    ", ".join(map(str, sorted(cut)[:5])) + (", ..." if len(cut) > 5 else ""))
        rows = [dict(r, question=cut[i]) if i in cut else r for i, r in enumerate(rows)]
    texts = [(r["prompt"], None) if templated else prompt(r, fmt, causal) for r in rows]
    first = [t[0] for t in texts]
    pairs = [t[1] for t in texts]
    if all(p is not None for p in pairs):
        enc = tok(first, pairs, truncation="only_second", max_length=max_length)
    else:
        enc = tok(first, truncation=True, max_length=max_length)
    return Encoded(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"),
                   labels=[int(r["label"]) for r in rows], cut_questions=sorted(cut))


def prompt_ids(tok, text: str) -> list[int]:
    return tok(text).input_ids  # with the tokenizer's own start token, as the model saw in pre-training


def continuation_ids(tok, prompt_text: str, continuation: str, eos: bool) -> list[int]:
    """The tokens of ' ' + continuation as they follow the prompt: encode prompt and prompt +
    continuation and take the new tokens (a sentencepiece tokenizer merges across the space, so
    encoding the continuation alone would give other tokens than the model sees)."""
    head = prompt_ids(tok, prompt_text)
    whole = prompt_ids(tok, f"{prompt_text} {continuation}")
    if whole[:len(head)] == head:
        ids = whole[len(head):]
    else:  # the tokenizer merged across the prompt's end: the continuation's own tokens
        ids = tok(f" {continuation}", add_special_tokens=False).input_ids
    return ids + ([tok.eos_token_id] if eos and tok.eos_token_id is not None else [])


def fit(head: list[int], tail: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut prompt + continuation to max_length: the prompt's start goes first (its first token,
    the start token, stays), then the continuation's end."""
    tail = tail[:max(1, max_length - 2)]
    over = len(head) + len(tail) - max_length
    if over > 0:
        head = head[:1] + head[1 + over:]
    return head, tail


def encode_sequences(rows: list[dict], tok, task: Task, max_length: int, *, all_choices: bool) -> Encoded:
    """Prompt + continuation sequences of a choice or generate task.  Training: one per row, the
    gold choice or the target.  Choice scoring (``all_choices``): one per (row, choice)."""
    ids, plens, labels, owners = [], [], [], []
    for i, row in enumerate(rows):
        text = row["prompt"]
        if task.kind == "choice":
            conts = row["choices"] if all_choices else [row["choices"][row["label"]]]
        else:
            conts = [row["target"]]
        for cont in conts:
            tail = continuation_ids(tok, text, cont, eos=task.kind == "generate")
            head, tail = fit(prompt_ids(tok, text), tail, max_length)
            ids.append(head + tail)
            plens.append(len(head))
            labels.append(int(row.get("label", 0)) if task.kind == "choice" else 0)
            owners.append(i)
    return Encoded(ids, None, labels, plens, owners)


def encode_prompts(rows: list[dict], tok, max_length: int) -> Encoded:
    """The prompts alone (generation): the start of an over-long prompt is cut."""
    ids = []
    for row in rows:
        head = prompt_ids(tok, row["prompt"])
        ids.append(head[:1] + head[1:][-(max_length - 1):] if len(head) > max_length else head)
    return Encoded(ids, None, [0] * len(ids), [len(x) for x in ids], list(range(len(ids))))


def task_prompt(task: Task, row: dict) -> dict:
    """A row of the task's fields as the data stage would store it (the template applied)."""
    return dict(row, prompt=render(task.template, row)) if task.template else row


def collate(enc: Encoded, idx: list[int], pad_id: int, left: bool = False, multiple: int = 1) -> dict:
    """A padded batch on the CPU: right padding (scoring, training), or left padding for
    generation (the prompts end together where decoding starts).  ``prompt_start`` and
    ``prompt_len`` locate each row's prompt; they are read on the CPU, never from the device.
    ``multiple`` pads the width up to a multiple of it (the compiled path: shapes repeat)."""
    width = max(len(enc.input_ids[i]) for i in idx)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    types = torch.zeros((len(idx), width), dtype=torch.long) if enc.token_type_ids else None
    starts = []
    for row, i in enumerate(idx):
        n = len(enc.input_ids[i])
        start = width - n if left else 0
        ids[row, start:start + n] = torch.tensor(enc.input_ids[i])
        mask[row, start:start + n] = 1
        starts.append(start)
        if types is not None:
            types[row, :n] = torch.tensor(enc.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask,
             "labels": torch.tensor([enc.labels[i] for i in idx]), "index": torch.tensor(idx),
             "prompt_start": torch.tensor(starts),
             "prompt_len": torch.tensor([enc.prompt_length(i) for i in idx]),
             "length": torch.tensor([len(enc.input_ids[i]) for i in idx])}
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
    """Length-grouped batches, the longest first (results are keyed by index, so order does not
    change them; each batch holds the same rows as in ascending order, so not a bit changes).

    Why longest first: on the CPU, torch's tensors come from glibc's malloc (heft/memory.py).
    In ascending order every batch's activations are a little larger than any block the previous
    batches freed, none fits, and the heap grows batch after batch: an evaluation of the 3,270
    BoolQ dev rows after a LoRA stage peaked at 2.2 GB (3.3 GB after a longer one).  Longest
    first, the first batches set the peak and every later, narrower batch fits into the holes
    they left: 1.4 GB for the same evaluation, no slower (docs/benchmarks.md section 15).  It
    also meets an out-of-memory error in the first batch rather than the last."""
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    return [order[j:j + batch_size] for j in range(0, len(order), batch_size)][::-1]


# read on the CPU only (positions, lengths, row numbers): never copied to the device
CPU_KEYS = ("index", "prompt_start", "prompt_len", "length")


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's model inputs on ``device``; positions, lengths and row numbers stay on the CPU.

    The right-padding check reads the CPU mask before the copy (on the device it would be a host
    sync per batch).  On CUDA the copies are from pinned memory and non-blocking: the host queues
    them and goes on, and the copy engine overlaps them with the previous step's kernels."""
    check_right_padded(batch["attention_mask"])
    return {k: v if k in CPU_KEYS else host_to_device(v, device) for k, v in batch.items()}


def check_right_padded(attention_mask: torch.Tensor) -> None:
    """Every row's real tokens come first: the last real token is at length-1.  Scoring reads the
    answer at that position, so a left-padded batch would score padding (generation pads on the
    left on purpose and says where each prompt starts).  Called on the CPU mask, before the copy
    (``to_device``): on the device the check would cost a host sync per batch."""
    if attention_mask.shape[1] > 1 and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        raise ValueError("attention_mask is not right-padded: heft scores and intervenes at "
                         "positions counted from the start of each row (pad on the right)")


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device`` without making the host wait: pinned, then non-blocking on CUDA
    (a copy from pageable memory is staged by the driver, and may wait for the device)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
