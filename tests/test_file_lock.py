"""A local build lock held for long: the waiter says who holds it (pid, host, since when), so
a holder that never returns can be found and stopped instead of being waited on in silence."""
from __future__ import annotations

import json
import os
import platform
import threading
import time

from heft.store.locks import FileLock, lock_name


def test_a_waiter_names_the_holder_while_it_waits(tmp_path, caplog):
    holder, waiter = FileLock(tmp_path), FileLock(tmp_path, report_s=0.3)
    entered = threading.Event()

    def wait():
        with waiter.hold("merge", "k1"):
            entered.set()
    with caplog.at_level("WARNING", logger="heft.store.locks"):
        with holder.hold("merge", "k1"):
            info = json.loads((tmp_path / f"{lock_name('merge', 'k1')}.lock").read_text())
            assert (info["pid"], info["host"]) == (os.getpid(), platform.node())
            assert abs(info["since"] - time.time()) < 5
            thread = threading.Thread(target=wait)
            thread.start()
            time.sleep(1.2)
            assert not entered.is_set()  # still excluded while the holder holds
        thread.join(timeout=10)
    assert entered.is_set()
    holder_named = f"held by pid {os.getpid()} on {platform.node()} since"
    assert f"merge k1: another run is building it; waiting for it ({holder_named}" in caplog.text
    reports = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert len(reports) >= 2, caplog.text  # repeated while the wait lasts, not only once
    assert reports[0].startswith(f"merge k1: still waiting for the build lock, {holder_named}")
