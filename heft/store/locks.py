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
  owner-checked lock.

Fencing.  A lease can run out under a holder that is alive but stopped (SIGSTOP, a long GC or
swap pause, a lost connection to Redis): another host then takes the key and publishes, and
the first, on resuming, used to write its files over the winner's artifact.  So ``hold``
yields a ``Held`` whose ``check()`` raises ``LeaseLost`` unless the lease is still ours; the
store calls it before anything of a build reaches the artifact's place (heft/store/
artifacts.py: publish), and meta.json written create-if-absent stays the last line.  A flock
cannot be lost while its holder lives, so a FileLock's check passes.

Who holds a key: the holder writes its pid, host and start time into the lock file (FileLock)
or beside the Redis key (LeaseLock), and a waiter names them every ``HEFT_LOCK_REPORT_S``
(default 60 s) while it waits: a holder that never returns can be found and stopped.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)
LEASE_S = float(os.environ.get("HEFT_LOCK_LEASE_S", "30"))


def report_interval() -> float:
    return float(os.environ.get("HEFT_LOCK_REPORT_S", "60"))


def lock_name(stage: str, key: str) -> str:
    return f"{stage.replace('/', '-')}-{key}"


def holder_info(stage: str, key: str) -> str:
    return json.dumps({"pid": os.getpid(), "host": platform.node(), "since": time.time(),
                       "stage": stage, "key": key})


def describe(info: str | bytes | None) -> str:
    """'held by pid 123 on host-a since 2026-12-05 10:00:00 (for 75 s)' from holder_info's JSON."""
    try:
        h = json.loads(info) if info else None
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"]))
        return f"held by pid {h['pid']} on {h['host']} since {since} (for {time.time() - h['since']:.0f} s)"
    except (ValueError, TypeError, KeyError):  # being rewritten right now, or from an older heft
        return "held by a holder that did not say who it is"


class LeaseLost(RuntimeError):
    """The build lease of a key ran out under its holder: it must not publish anything."""

    def __init__(self, stage: str, key: str, why: str):
        super().__init__(f"{stage} {key}: the build lease was lost ({why}); another host may build or "
                         "have built this key, so this build published nothing")
        self.stage, self.key = stage, key


class Held:
    """A held build lock; ``check()`` raises LeaseLost when it is no longer ours."""

    def __init__(self, stage: str, key: str, owned: Callable[[], bool] | None = None):
        self.stage, self.key, self._owned = stage, key, owned

    def check(self) -> None:
        if self._owned is None:
            return
        for attempt in range(3):
            try:
                if self._owned():
                    return
                raise LeaseLost(self.stage, self.key, "its key now holds another owner's token, or none")
            except LeaseLost:
                raise
            except Exception as e:  # noqa: BLE001 - the lock server does not answer: cannot confirm
                if attempt == 2:
                    raise LeaseLost(self.stage, self.key, f"it could not be confirmed: {e}") from None
                time.sleep(1)


@contextmanager
def reporting(stage: str, key: str, holder: Callable[[], str], every: float) -> Iterator[None]:
    """While the body waits for a lock, log every ``every`` s who holds it."""
    stop = threading.Event()

    def report():
        while not stop.wait(every):
            log.warning("%s %s: still waiting for the build lock, %s", stage, key, holder())
    thread = threading.Thread(target=report, daemon=True, name=f"lock-report-{key}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class FileLock:
    """flock-based build locks under ``folder`` (one host)."""

    def __init__(self, folder: Path, report_s: float | None = None):
        self.folder = folder
        self.report_s = report_s or report_interval()

    @contextmanager
    def hold(self, stage: str, key: str) -> Iterator[Held]:
        """Hold the exclusive build lock of (stage, key); waits while another process has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{lock_name(stage, key)}.lock"
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                def holder() -> str:
                    try:
                        return describe(path.read_text())
                    except OSError:
                        return describe(None)
                log.warning("%s %s: another run is building it; waiting for it (%s)", stage, key, holder())
                with reporting(stage, key, holder, self.report_s):
                    fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0)
                f.truncate()
                f.write(holder_info(stage, key))  # for the waiters' reports
                f.flush()
                yield Held(stage, key)
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)


class LeaseLock:
    """Redis lease locks shared by every host that uses the same artifact root."""

    def __init__(self, url: str, namespace: str, lease_s: float = LEASE_S, report_s: float | None = None):
        import redis
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.url, self.namespace, self.lease_s = url, namespace, lease_s
        self.report_s = report_s or report_interval()

    def ping(self) -> None:
        self.client.ping()

    @contextmanager
    def hold(self, stage: str, key: str) -> Iterator[Held]:
        name = f"heft:lock:{self.namespace}:{lock_name(stage, key)}"
        who = f"{name}:holder"  # who holds it, for waiters; expires with the lease
        # thread_local=False: the renewal thread must see the owner token
        lock = self.client.lock(name, timeout=self.lease_s, sleep=0.2, thread_local=False)
        if not lock.acquire(blocking=False):
            def holder() -> str:
                try:
                    return describe(self.client.get(who))
                except Exception as e:  # noqa: BLE001 - only a report
                    return f"holder unknown ({e})"
            log.warning("%s %s: another host is building it; waiting for it (lease %.0f s, %s)", stage, key,
                        self.lease_s, holder())
            with reporting(stage, key, holder, self.report_s):
                lock.acquire(blocking=True)
        lease_ms = int(self.lease_s * 1000)
        try:
            self.client.set(who, holder_info(stage, key), px=lease_ms)
        except Exception as e:  # noqa: BLE001 - only the waiters' report: the lock itself is held
            log.warning("%s: could not record who holds it (%s)", name, e)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(lock, stop, name, who, lease_ms), daemon=True)
        renewer.start()
        try:
            yield Held(stage, key, owned=lock.owned)
        finally:
            stop.set()
            renewer.join()
            try:
                lock.release()
            except Exception:  # noqa: BLE001 - the lease ran out: nothing of ours to release
                log.warning("%s: lease lost before release", name)

    def _renew(self, lock, stop: threading.Event, name: str, who: str, lease_ms: int) -> None:
        from redis.exceptions import LockNotOwnedError
        while not stop.wait(self.lease_s / 3):
            try:
                lock.reacquire()  # reset the TTL to a full lease, only if we still own it
                self.client.pexpire(who, lease_ms)
            except LockNotOwnedError:  # for good: publishing will refuse (Held.check)
                log.warning("%s: the lease ran out and the key is no longer ours; this build will "
                            "publish nothing", name)
                return
            except Exception as e:  # noqa: BLE001 - connection errors: the lease may still be ours
                log.warning("%s: could not renew the lease (%s); another host may take over", name, e)
                time.sleep(1)
