"""Build locks: one builder per (stage, key) at a time.

* ``FileLock``: an exclusive ``flock`` on a file per key, held while a stage builds.  The
  kernel drops it when its holder dies (even by SIGKILL), so no stale lock survives a crash.
  It coordinates the processes of one host: locks live next to a local root, or in the local
  cache for remote roots.
* ``LeaseLock``: for remote roots shared by many hosts (``HEFT_LOCK_URL=redis://host:6379/0``).
  A Redis key per (stage, key), set with ``SET NX PX`` and an owner token (redis-py's Lock);
  the holder renews it every third of the lease while it builds, so a holder that is killed
  (SIGKILL, OOM, a lost host) frees the key within one lease (``HEFT_LOCK_LEASE_S``, default
  30 s) and another host takes over.  Chosen over Prefect's own isolation: its Redis and file
  lock managers never expire a dead holder's lock (measured, ../shared/KNOWN-TRAPS.md), and a
  Prefect global-concurrency lease cannot be shorter than 60 s and is a slot counter, not an
  owner-checked lock.  The lease is the first line; publishing meta.json create-if-absent is
  the second (heft/store/artifacts.py), so even a holder that lost its lease cannot overwrite
  the artifact another host published.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)
LEASE_S = float(os.environ.get("HEFT_LOCK_LEASE_S", "30"))


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


class LeaseLock:
    """Redis lease locks shared by every host that uses the same artifact root."""

    def __init__(self, url: str, namespace: str, lease_s: float = LEASE_S):
        import redis
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.url, self.namespace, self.lease_s = url, namespace, lease_s

    def ping(self) -> None:
        self.client.ping()

    @contextmanager
    def hold(self, stage: str, key: str) -> Iterator[None]:
        name = f"heft:lock:{self.namespace}:{lock_name(stage, key)}"
        # thread_local=False: the renewal thread must see the owner token
        lock = self.client.lock(name, timeout=self.lease_s, sleep=0.2, thread_local=False)
        if not lock.acquire(blocking=False):
            log.warning("%s %s: another host is building it; waiting for it (lease %.0f s)", stage, key,
                        self.lease_s)
            lock.acquire(blocking=True)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(lock, stop, name), daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            try:
                lock.release()
            except Exception:  # noqa: BLE001 - the lease ran out: nothing of ours to release
                log.warning("%s: lease lost before release", name)

    def _renew(self, lock, stop: threading.Event, name: str) -> None:
        while not stop.wait(self.lease_s / 3):
            try:
                lock.reacquire()  # reset the TTL to a full lease, only if we still own it
            except Exception as e:  # noqa: BLE001 - LockNotOwnedError, connection errors
                log.warning("%s: could not renew the lease (%s); another host may take over", name, e)
                time.sleep(1)
