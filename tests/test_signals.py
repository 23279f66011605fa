"""Signals: Ctrl-C (SIGINT to the process group) or SIGTERM during LoRA stops `heft run` within
seconds, closes the MLflow runs and the Prefect flow run, and stops the temporary Prefect
server; SIGKILL of the CLI (an OOM kill) takes the server with it, and the next run removes the
scratch folder the killed build left behind."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def marked(marker: str) -> list[int]:
    needle = f"HEFT_TEST_MARKER={marker}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def as_a_terminal_job() -> None:
    """A shell starts a foreground job with SIGINT at its default, so Ctrl-C reaches it; a
    background job of a non-interactive shell (`make test &`, some CI runners) inherits SIGINT
    ignored, and Python then keeps it ignored. The test wants the terminal's case."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(tmp_path, tiny_llama, keyword_data, marker):
    args = [sys.executable, "-m", "flows.cli", "run", "--preset", "deployments/stories-boolq.yaml",
            f"model.name={tiny_llama}", "model.max_length=32", f"data.source={keyword_data}",
            "data.holdout_size=60", "data.valid_size=40", "data.max_train=480", "lora.epochs=200",
            "lora.lr=1e-2", "reft.layer=1",
            f"artifact_root={tmp_path}/art", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    env = {**os.environ, "HEFT_TEST_MARKER": marker, "PREFECT_HOME": str(tmp_path / "prefect"),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PREFECT_API_URL": ""}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=as_a_terminal_job)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if ": epoch 2/200," in line:  # inside the LoRA build (its epoch line): scratch folder, open runs
            return proc, seen
    raise AssertionError("the run ended before LoRA trained: " + "".join(seen[-40:]))


def open_mlflow_runs(tmp_path) -> list[str]:
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        return [r[0] for r in db.execute("select name from runs where status = 'RUNNING'")]


# SIGTERM takes the same path as Ctrl-C once its handler raises KeyboardInterrupt: slow tier (27 s)
@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_interrupt_stops_within_seconds_and_closes_everything(tmp_path, tiny_llama, keyword_data, sig):
    marker = uuid.uuid4().hex
    proc, _ = start(tmp_path, tiny_llama, keyword_data, marker)
    t0 = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does
    else:
        proc.send_signal(sig)
    rest = proc.communicate(timeout=60)[0]
    seconds = time.monotonic() - t0
    assert proc.returncode == 130 and f"heft: stopped by {sig.name} during lora;" in rest, rest[-3000:]
    assert seconds < 30, f"took {seconds:.0f} s to stop"
    time.sleep(1)
    assert marked(marker) == [], "a process of the run (the temporary server?) is still alive"
    assert open_mlflow_runs(tmp_path) == []
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        states = [r[0] for r in db.execute("select state_type from flow_run")]
    assert states and "RUNNING" not in states, states


def test_sigkill_takes_the_server_along_and_the_next_run_cleans_up(tmp_path, tiny_llama, keyword_data):
    marker = uuid.uuid4().hex
    proc, _ = start(tmp_path, tiny_llama, keyword_data, marker)
    scratch = list((tmp_path / "art" / ".tmp").iterdir())
    assert scratch, "no scratch folder while LoRA builds"
    os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marked(marker) == [], "the temporary Prefect server outlived its CLI"
    from heft.store.artifacts import ArtifactStore
    removed = ArtifactStore(str(tmp_path / "art")).clean_scratch()  # what the next run's validation does
    assert sorted(removed) == sorted(p.name for p in scratch)
    assert list((tmp_path / "art" / ".tmp").iterdir()) == []
    left = open_mlflow_runs(tmp_path)  # the killed run could not close its pipeline and LoRA runs
    assert any(name.startswith("lora · ") for name in left) and len(left) == 2
    from heft.tracking.orphans import close_orphans  # what the next run does when it starts
    assert sorted(close_orphans(f"sqlite:///{tmp_path}/mlflow.db", "heft")) == sorted(left)
    assert open_mlflow_runs(tmp_path) == []
