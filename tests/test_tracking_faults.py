"""Tracking faults do not kill training: a locked sqlite store during the live per-step logging
is waited out and retried, a store that keeps failing only warns, a dead MLflow server is found
in validation (tests/test_validation.py), and two runs started at once on a brand-new sqlite
store both work (its creation is serialised)."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from heft.config import LoraConfig
from heft.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]


def train_with_live_logging(tiny_config, tmp_path, tracker):
    from heft.run.execute import run_plan
    from heft.plan import plan
    cfg = tiny_config(tmp_path / "art", mode="lora-only", lora=LoraConfig(epochs=2, lr=1e-2))
    return run_plan(plan(cfg), progress=tracker.progress(every=2))


@pytest.mark.long  # 33 s: a full run against a store locked for seconds
def test_a_locked_store_is_waited_out_and_the_curves_still_arrive(tiny_config, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = Tracker.start(uri, "heft", "lora", params={})
    held, released = threading.Event(), []

    def hold():  # its own connection: sqlite objects stay in the thread that made them
        lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=60, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # another process holding the store, e.g. a long write
        held.set()
        time.sleep(25)                   # longer than MLflow's own 20 s busy timeout
        lock.execute("ROLLBACK")
        released.append(time.monotonic())
        lock.close()
    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30), "the test could not lock the store"
    started = time.monotonic()
    out = train_with_live_logging(tiny_config, tmp_path, run)
    holder.join()
    assert released and released[0] - started > 20  # the lock really overlapped the training
    assert out["eval:merged"].metrics["accuracy"] > 0.8  # training finished
    from mlflow import MlflowClient
    steps = MlflowClient(uri).get_metric_history(run.run_id, "train_loss")
    assert len(steps) >= 10  # every logged step got through once the lock was gone


def test_a_store_that_keeps_failing_only_warns(tiny_config, tmp_path, monkeypatch, caplog):
    from heft.tracking import client as tracking_client
    monkeypatch.setattr(tracking_client, "BACKOFF", (0.01, 0.01, 0.01))
    run = Tracker.start(f"sqlite:///{tmp_path}/mlflow.db", "heft", "lora", params={})
    real = tracking_client.client(run.uri)

    class Broken:
        def __getattr__(self, name):
            if name == "log_batch":
                def fail(*args, **kwargs):
                    raise sqlite3.OperationalError("database is locked")
                return fail
            return getattr(real, name)
    monkeypatch.setitem(tracking_client._CLIENTS, run.uri, Broken())
    with caplog.at_level("WARNING"):
        out = train_with_live_logging(tiny_config, tmp_path, run)
    assert out["lora"].metrics["final_valid_accuracy"] > 0.5  # the stage completed
    assert "training goes on without it" in caplog.text


def test_two_runs_at_once_on_a_new_sqlite_store(tmp_path):
    code = ("import sys, time; from heft.tracking import Tracker\n"
            "while time.time() < float(sys.argv[2]): time.sleep(0.005)\n"
            "t = Tracker.start(sys.argv[1], 'heft', 'run', params={'a': 1}); t.finish(); print('ok')")
    uri, at = f"sqlite:///{tmp_path}/new/mlflow.db", str(time.time() + 8)
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, at], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 and o.strip().endswith("ok") for p, o in zip(procs, outs)), outs
    from mlflow import MlflowClient
    client = MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name("heft").experiment_id])) == 2


# opens an MLflow run, then dies as the OOM killer would end it: no chance to close the run
KILLED_RUN = ("import os, signal, sys\nfrom heft.tracking import Tracker\n"
              "run = Tracker.start(sys.argv[1], 'heft', 'killed', params={})\n"
              "print(run.run_id, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")


def test_a_run_left_running_by_a_killed_process_is_closed_on_the_next_start(tmp_path):
    """What `heft run`, `heft grid` and `heft study` do when they start: runs of the experiment
    still RUNNING whose process on this host is gone become KILLED; a live process's run, and a
    run whose pid now belongs to another process (another start time), are told apart."""
    import signal

    from mlflow import MlflowClient
    from heft.tracking.orphans import PID_STARTED, alive, close_orphans, process_started
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    live = Tracker.start(uri, "heft", "live", params={})  # this process's: it still runs
    out = subprocess.run([sys.executable, "-c", KILLED_RUN, uri], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    killed = out.stdout.split()[0]
    client = MlflowClient(uri)
    assert client.get_run(killed).info.status == "RUNNING"  # what kill -9 leaves behind
    assert close_orphans(uri, "heft") == ["killed"]
    assert client.get_run(killed).info.status == "KILLED"
    assert "was gone" in client.get_run(killed).data.tags["heft.closed_by"]
    assert client.get_run(live.run_id).info.status == "RUNNING"
    assert close_orphans(uri, "heft") == [] and close_orphans(uri, "no-such-experiment") == []
    started = client.get_run(live.run_id).data.tags.get(PID_STARTED)
    if started:  # Linux: the same pid with another start time is another process
        assert started == process_started(os.getpid()) and not alive(os.getpid(), str(int(started) + 1))
