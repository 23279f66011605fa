"""ReFT's frozen prefix, computed once per stage.

In the ReFT stage no weight below the intervention changes, and every epoch (and every
validation pass) feeds the same sequences through them.  So the output of block ``layer`` (before
the intervention edits it) is computed once per sequence and kept; each step then runs only the
blocks above ``layer``.  On MiniLM at layer 4 of 6 a step does about 3 of its 8 block-units of
work (forward 6, backward through the last block, 2); the first pass still costs what it did.

How a step skips the prefix: while the intervention is attached, blocks 0..layer have their
``forward`` replaced by one that returns the batch's cached output when there is one (and runs the
block otherwise).  The model's own forward still runs around them, so its attention mask,
rotary position embeddings and everything above the layer are exactly the plain path's; the
intervention's hook on block ``layer`` edits the cached output as it would the computed one.

Exact where the prefix is a fixed function of the tokens:
* rows are cached one by one (their real tokens; padding is added at batch time, and padded
  positions are masked out of every real token's attention, so what they hold does not matter);
* a batch uses the cache only when every row is in it and every dropout in the prefix is off
  (eval mode, or p = 0).  Decoder LMs (Llama: no dropout) use it in training and evaluation; an
  encoder with dropout (BERT, MiniLM) in evaluation passes, and in training only with
  ``reft.prefix_dropout=false``, which keeps those blocks in eval mode;
* the cache is filled in the same length-sorted batches of 64 that scoring uses, so a validation
  pass through the cache gives the plain pass's scores to the bit; a training step differs from
  the plain step only by the rounding of the prefix in other batch shapes (float tolerance).
Architectures other than SUPPORTED fall back to the plain path (a log line says so).
"""
from __future__ import annotations

import logging
import os
import types
from contextlib import contextmanager

import torch
from torch import nn

from heft.data.batching import Encoded, collate, eval_batches, host_to_device, to_device
from heft.modeling.models import model_mask, transformer_layers, unwrap
from heft.modeling.precision import autocast

log = logging.getLogger(__name__)
SUPPORTED = ("llama", "bert")          # the model types whose prefix plumbing is tested
BUDGET_MB = float(os.environ.get("HEFT_PREFIX_CACHE_MB", "2048"))
DROPOUT_ATTRS = ("dropout_prob", "attention_dropout", "attn_dropout")
FILL_BATCH = 64                        # scoring's batch (answering.py): validation reuses it to the bit


class _Stop(Exception):
    """Raised by the capture hook: the blocks above ``layer`` are not needed to fill the cache."""


def prefix_modules(model: nn.Module, layer: int) -> list[nn.Module]:
    """What computes block ``layer``'s output: the embeddings and blocks 0..layer."""
    base = unwrap(model)
    inner = getattr(base, base.base_model_prefix)
    embeddings = getattr(inner, "embeddings", None) or inner.get_input_embeddings()
    return [embeddings, *transformer_layers(model)[:layer + 1]]


def random_modules(modules: list[nn.Module]) -> list[nn.Module]:
    """The modules among ``modules`` (and inside them) that draw random numbers in train mode."""
    out = []
    for top in modules:
        for m in top.modules():
            if isinstance(m, nn.Dropout) and m.p > 0:
                out.append(m)
            elif any(isinstance(getattr(m, a, None), float) and getattr(m, a) > 0 for a in DROPOUT_ATTRS):
                out.append(m)
    return out


@contextmanager
def kept_in_eval(modules: list[nn.Module]):
    """Keep ``modules`` in eval mode while the model around them is switched to train mode
    (``model.train()`` reaches them through their ``train`` method, replaced here)."""
    def stay_eval(self, mode: bool = True):
        return nn.Module.train(self, False)
    for m in modules:
        m.train = types.MethodType(stay_eval, m)
        nn.Module.train(m, False)
    try:
        yield
    finally:
        for m in modules:
            del m.train


def row_keys(batch: dict) -> list[tuple]:
    """One key per row: its real tokens (and token types), read from the CPU batch."""
    lengths = batch["length"].tolist()
    ids = batch["input_ids"].tolist()
    types_ = batch["token_type_ids"].tolist() if "token_type_ids" in batch else None
    return [(tuple(ids[r][:n]), tuple(types_[r][:n]) if types_ else None) for r, n in enumerate(lengths)]


class PrefixCache:
    """Block ``layer``'s output for each sequence it was filled with (see the module doc)."""

    def __init__(self, model: nn.Module, layer: int):
        self.model, self.layer = model, layer
        self.blocks = transformer_layers(model)[:layer + 1]
        self.random = random_modules(prefix_modules(model, layer))
        self.spans: dict[tuple, tuple[int, int]] = {}   # key -> (offset, length) in the storage
        self.storage: torch.Tensor | None = None        # (tokens + 1, hidden); the last row is 0
        self.used = 0
        self.hits = self.misses = 0
        self._current: torch.Tensor | None = None

    @classmethod
    def for_model(cls, model: nn.Module, layer: int) -> "PrefixCache | None":
        model_type = unwrap(model).config.model_type
        if model_type not in SUPPORTED:
            log.info("reft: no prefix cache for model type %r (supported: %s); every step runs all blocks",
                     model_type, ", ".join(SUPPORTED))
            return None
        return cls(model, layer)

    @property
    def megabytes(self) -> float:
        return 0.0 if self.storage is None else self.storage.numel() * self.storage.element_size() / 2**20

    def deterministic(self) -> bool:
        """Whether the prefix computes a fixed function of the tokens right now (no dropout on)."""
        return not any(m.training for m in self.random)

    @torch.no_grad()
    def fill(self, enc: Encoded, pad_id: int, precision: str = "off", budget_mb: float = BUDGET_MB) -> bool:
        """Compute and keep block ``layer``'s output for every sequence of ``enc`` not cached yet (in
        eval mode, in scoring's batches).  False, and nothing kept, when it would pass the budget."""
        dev = next(self.model.parameters()).device
        todo, seen = [], set()
        for i in range(len(enc)):
            key = (tuple(enc.input_ids[i]), tuple(enc.token_type_ids[i]) if enc.token_type_ids else None)
            if key not in self.spans and key not in seen:
                seen.add(key)
                todo.append(i)
        if not todo:
            return True
        tokens = sum(len(enc.input_ids[i]) for i in todo)
        hidden = unwrap(self.model).config.hidden_size
        need = self.used + tokens + 1   # rows of storage: every token, then the zero row
        size_mb = need * hidden * next(self.model.parameters()).element_size() / 2**20
        if size_mb > budget_mb:
            log.info("reft: prefix cache of %d sequences would take %.0f MB (> HEFT_PREFIX_CACHE_MB=%.0f): "
                     "not cached", len(todo), size_mb, budget_mb)
            return False
        captured: list[torch.Tensor] = []

        def capture(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop
        was_training = self.model.training
        self.model.eval()
        handle = self.blocks[self.layer].register_forward_hook(capture)
        base = unwrap(self.model)
        inner = getattr(base, base.base_model_prefix)
        sub = Encoded([enc.input_ids[i] for i in todo],
                      [enc.token_type_ids[i] for i in todo] if enc.token_type_ids else None, [0] * len(todo))
        try:
            for idx in eval_batches(sub, FILL_BATCH):
                batch = to_device(collate(sub, idx, pad_id), dev)
                kwargs = {"attention_mask": model_mask(self.model, batch)}
                if "token_type_ids" in batch:
                    kwargs["token_type_ids"] = batch["token_type_ids"]
                with autocast(precision, dev.type):
                    try:
                        inner(input_ids=batch["input_ids"], **kwargs)
                    except _Stop:
                        pass
                out = captured.pop()
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"block {self.layer} returned {type(out).__name__}")
                self._store(sub, idx, out, need)
        finally:
            handle.remove()
            self.model.train(was_training)
        return True

    def _store(self, sub: Encoded, idx: list[int], out: torch.Tensor, need: int) -> None:
        """Keep the real tokens of each row of ``out`` (B, T, hidden), one row after another."""
        if self.storage is None or len(self.storage) < need:
            self._reserve(need, out)
        lengths = [len(sub.input_ids[i]) for i in idx]
        rows = torch.cat([torch.full((n,), r) for r, n in enumerate(lengths)])
        cols = torch.cat([torch.arange(n) for n in lengths])
        flat = out[host_to_device(rows, out.device), host_to_device(cols, out.device)]
        self.storage[self.used:self.used + len(flat)] = flat.to(self.storage.device)
        for i, n in zip(idx, lengths):
            key = (tuple(sub.input_ids[i]), tuple(sub.token_type_ids[i]) if sub.token_type_ids else None)
            self.spans[key] = (self.used, n)
            self.used += n

    def _reserve(self, rows: int, like: torch.Tensor) -> None:
        """Zeroed storage of ``rows`` rows (the last one stays zero: padding), keeping what is
        stored; on the model's device when it fits a quarter of its free memory, else in pinned
        host memory."""
        where, pin = like.device, False
        if like.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(like.device)
            if rows * like.shape[-1] * like.element_size() > free / 4:
                where, pin = torch.device("cpu"), True
        new = torch.zeros(rows, like.shape[-1], dtype=like.dtype, device=where, pin_memory=pin)
        if self.storage is not None:
            new[:self.used] = self.storage[:self.used]
        self.storage = new

    # -- at batch time --------------------------------------------------------------------------
    def select(self, batch: dict | None) -> None:
        """Serve this CPU batch from the cache if every row is in it and the prefix is deterministic
        now; else (or with None) let the blocks run."""
        self._current = None
        if batch is None or self.storage is None or "length" not in batch or not self.deterministic():
            return
        spans = [self.spans.get(k) for k in row_keys(batch)]
        if any(s is None for s in spans):
            self.misses += 1
            return
        width = batch["input_ids"].shape[1]
        offsets = torch.tensor([s[0] for s in spans])[:, None]
        lengths = torch.tensor([s[1] for s in spans])[:, None]
        steps = torch.arange(width)[None, :]
        zero_row = len(self.storage) - 1
        index = torch.where(steps < lengths, offsets + steps, zero_row).reshape(-1)
        rows = self.storage.index_select(0, host_to_device(index, self.storage.device))
        dev = next(self.model.parameters()).device
        self._current = host_to_device(rows, dev).view(len(spans), width, -1)
        self.hits += 1

    @contextmanager
    def skipping(self):
        """Blocks 0..layer return the selected batch's cached output instead of computing it."""
        def skip(original):
            def forward(*args, **kwargs):
                return original(*args, **kwargs) if self._current is None else self._current
            return forward
        prior = [block.__dict__.get("forward") for block in self.blocks]
        for block in self.blocks:
            block.forward = skip(block.forward)
        try:
            yield
        finally:
            for block, forward in zip(self.blocks, prior):
                del block.forward
                if forward is not None:
                    block.forward = forward
            self._current = None
