"""Giving a stage's freed memory back to the system when it returns (glibc malloc).

A stage's tensors die when it returns (nothing of a stage is kept alive: tests/test_memory.py),
but glibc's malloc does not give their pages back.  torch allocates tensor storage with
``posix_memalign``; glibc serves a request below its mmap threshold from the heap and, after a
freed mmap'd block, raises that threshold up to 32 MB, so nearly every activation of a MiniLM
batch ends up on the heap.  Training batches change shape every step (length-grouped batches,
heft/data/batching.py), freed blocks rarely fit the next step's tensors, the holes stay resident
and the heap grows step after step: one MiniLM LoRA epoch (batch 16, max_length 256, one thread)
peaked at 2.9 GB after 13 steps and 4.4 GB after 50, about 40 MB more per step, where its tensors
alive at once need 1.7 GB (docs/benchmarks.md, "Memory per stage").  After the stage returned,
the process kept 2.1 GB of which ``malloc_trim`` gave back 1.5 GB, so every later stage of the
flow started from the LoRA stage's high-water mark.

``release()`` runs when a stage that built returns (heft/stages/__init__.py): a garbage
collection (belt and braces: today every model is freed by reference counting alone, with the
automatic collector off, tests/test_memory.py), then ``malloc_trim(0)``, which hands the free
pages anywhere in every arena back to the kernel.  It changes no number, only which freed pages
stay mapped, and costs milliseconds.

Inside a training stage ``trim()`` runs once per epoch, before validation
(heft/modeling/training.py): validation's wider batches do not fit the holes the steps left.
The growth across the steps themselves is bounded by batch widths that repeat
(``lora.width_multiple`` / ``reft.width_multiple``, set by the default preset), not here.
Measured and not switched on (one thread, MiniLM, 800 rows, one LoRA epoch): trimming after
every optimizer step lowered the peak from 4.4 to 3.4 GB for 22% more wall time (the trimmed
pages are faulted in again), a fixed 1 MB mmap threshold (``mallopt``) to 2.8 GB for 70% more.
Evaluation scores its widest batch first for the same reason (heft/data/batching.py).

Without glibc (macOS, musl) ``release()`` is only the garbage collection.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def trim() -> bool:
    """Give the C heap's free pages back to the system; True where malloc_trim exists."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


def release() -> None:
    """After a stage: collect reference cycles (a model in one would otherwise wait for the
    next full collection), then give the freed pages back."""
    gc.collect()
    trim()
