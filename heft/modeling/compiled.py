"""The optional compiled path (``lora.compile`` / ``reft.compile``, off by default): each
transformer block through ``torch.compile``, batch widths bucketed so shapes repeat.

A compiled block fuses its elementwise work (norms, rotary embeddings, activations, the LoRA
adapter's scale and add) into a few kernels, which is where a small model's step spends its launch
overhead on a GPU.  torch.compile specialises on shapes: heft pads each batch to its longest row,
so a length-grouped epoch sees dozens of widths, and each would compile anew.  With the compiled
path every batch is padded up to a multiple of ``BUCKET`` tokens (at most max_length / 64 + 1
widths), and the blocks are compiled with static shapes; the padding is masked out of every real
token's attention, so the numbers change only by rounding.  The blocks share one compiled graph
per shape (torch inlines the module instances, their weights are graph inputs).  In the ReFT
stage only the blocks above the intervention are compiled: the prefix cache replaces the others'
``forward``.  Whether it pays is for bench/real_work.py to show on a GPU; on the CPU compiling
costs tens of seconds per shape.  ``HEFT_COMPILE_BACKEND`` picks the backend (default inductor;
tests use aot_eager, which traces the same graphs without generating code).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager

from torch import nn

BUCKET = 64


def bucketed(width: int, multiple: int) -> int:
    """``width`` rounded up to a multiple of ``multiple`` (1: unchanged)."""
    return width if multiple <= 1 else math.ceil(width / multiple) * multiple


@contextmanager
def compiled_blocks(blocks: list[nn.Module], enabled: bool = True):
    """Run ``blocks`` compiled for the duration (``Module.compile``), then as they were."""
    if not enabled:
        yield
        return
    backend = os.environ.get("HEFT_COMPILE_BACKEND", "inductor")
    for block in blocks:
        block.compile(backend=backend, dynamic=False)
    try:
        yield
    finally:
        for block in blocks:
            block._compiled_call_impl = None
