"""Build locks: one builder per (stage, key) at a time.

``FileLock`` is an exclusive ``flock`` on a file per key, held while a stage builds.  The
kernel drops it when its holder dies (even by SIGKILL), so no stale lock survives a crash.
It coordinates the processes of one host: locks live next to a local root, or in the local
cache for remote roots.
"""
from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def lock_name(stage: str, key: str) -> str:
    return f"{stage.replace('/', '-')}-{key}"


class FileLock:
    """flock-based build locks under ``folder`` (one host)."""

    def __init__(self, folder: Path):
        self.folder = folder

    @contextmanager
    def hold(self, stage: str, key: str) -> Iterator[None]:
        """Hold the exclusive build lock of (stage, key); waits while another process has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{lock_name(stage, key)}.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("%s %s: another run is building it; waiting for it", stage, key)
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
