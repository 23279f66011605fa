"""Disk full, said in words: which file, how much space is left, about how much was needed.

A full disk during a checkpoint's ``torch.save`` surfaced as ``RuntimeError: [enforce fail at
inline_container.cc:672] . unexpected pos 61440 vs 61392``, with no word of disk space;
safetensors and plain writes say ``[Errno 28] No space left on device`` without the free space.
``named_when_full`` wraps heft's writes (a stage's files, publishing, checkpoints, downloads,
exports) and re-raises such an error as ``DiskFull``, an ``OSError`` with errno ENOSPC whose
message names the path, the free space and, where known, what the write needed.

When is an error "disk full"?  An OSError with errno ENOSPC or EDQUOT, or a message that says so;
or, for libraries that hide the errno (torch's zip writer), any error from the write while the
disk holds less than it needed (less than 1 MiB when the need is unknown).  Anything else is
re-raised unchanged.  Nothing half-written is published: the writes go to a scratch folder that
is removed on the way out (heft/store/artifacts.py).
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from typing import Any, Iterator

MIN_FREE = 1 << 20
SAYS_FULL = ("No space left", "StorageFull", "Disk quota exceeded")


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def usage(path: str | os.PathLike) -> tuple[int, int]:
    """(free, total) bytes of the filesystem holding ``path`` (its nearest existing folder)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    u = shutil.disk_usage(path)
    return u.free, u.total


def nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state dict: about what torch.save will write."""
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


class DiskFull(OSError):
    """A write failed because the disk is full; the message says where and by how much."""

    def __init__(self, path: str | os.PathLike, what: str, free: int, total: int, need: int | None):
        needs = f", it needs about {size(need)}" if need else ""
        super().__init__(errno.ENOSPC, f"no space left on the disk of {path} ({what}): {size(free)} free "
                                       f"of {size(total)}{needs}; free some space and rerun (nothing was "
                                       "published)")
        self.filename = str(path)

    def __str__(self) -> str:
        return self.strerror


def is_full(e: BaseException, path: str | os.PathLike, need: int | None) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(s in str(e) for s in SAYS_FULL):
        return True
    try:
        return usage(path)[0] < (need or MIN_FREE)
    except OSError:
        return False


@contextmanager
def named_when_full(path: str | os.PathLike, what: str, need: int | None = None) -> Iterator[None]:
    """Re-raise a disk-full error from the body as DiskFull naming ``path`` (or the file the
    error names) and the space left; other errors pass unchanged."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:  # noqa: BLE001 - torch, safetensors and the OS each raise their own type
        if not is_full(e, path, need):
            raise
        where = getattr(e, "filename", None) or path
        free, total = usage(where)
        raise DiskFull(where, what, free, total, need) from e
