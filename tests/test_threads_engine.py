"""The threads engine of a grid (``workers=2``, Prefect's ThreadPoolTaskRunner) on the causal
path: two models loaded on two threads at once both come back whole; a step starts as soon as
its parent is done, so the ReFT-only branch trains beside LoRA instead of after it; a failed
step is reported once, with its cells, and what it held back is named."""
from __future__ import annotations

import threading

import pytest
import torch


@pytest.fixture
def transformers_state(monkeypatch):
    """Put back whatever transformers swaps process-wide while it loads, whatever the test did."""
    from transformers import PreTrainedModel
    from transformers.initialization import TORCH_INIT_FUNCTIONS
    monkeypatch.setattr(PreTrainedModel, "tie_weights", PreTrainedModel.tie_weights)
    for name in TORCH_INIT_FUNCTIONS:
        if hasattr(torch.nn.init, name):
            monkeypatch.setattr(torch.nn.init, name, getattr(torch.nn.init, name))
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


def test_two_threads_loading_at_once_both_get_the_whole_model(stories, transformers_state, monkeypatch):
    """Thread A is held inside from_pretrained's set-up (tie_weights swapped for a no-op) while
    thread B loads: without one load at a time, B's tied lm_head stays on the meta device
    ("Cannot copy out of meta tensor" at its first .to()), the race the grid hit at random."""
    from transformers import LlamaForCausalLM
    from heft.modeling import models
    reference = models.load_model(str(stories), "causal-lm").state_dict()
    inside, b_done = threading.Event(), threading.Event()
    init = LlamaForCausalLM.__init__

    def held_init(self, config, *args, **kwargs):
        if not inside.is_set():  # thread A: wait for B (at most 1 s: B may be waiting for A)
            inside.set()
            b_done.wait(timeout=1.0)
        init(self, config, *args, **kwargs)
    monkeypatch.setattr(LlamaForCausalLM, "__init__", held_init)
    got = {}

    def load(name: str) -> None:
        try:
            got[name] = models.load_model(str(stories), "causal-lm").to("cpu").state_dict()
        except Exception as e:  # noqa: BLE001 - the race's error is the finding
            got[name] = e
    a = threading.Thread(target=load, args=("a",))
    a.start()
    assert inside.wait(timeout=30)
    b = threading.Thread(target=load, args=("b",))
    b.start()
    b.join(timeout=60)
    b_done.set()
    a.join(timeout=60)
    for name in "ab":
        assert not isinstance(got[name], Exception), f"thread {name}: {got[name]!r}"
        assert got[name].keys() == reference.keys()
        assert all(torch.equal(got[name][k], reference[k]) for k in reference), name


CELLS = ({"label": "HEFT", "mode": "heft"}, {"label": "ReFT-only", "mode": "reft-only"})


def threads_grid(tiny_llama, keyword_data, tmp, root: str, *extra: str):
    """HEFT and ReFT-only on the tiny Llama, on 2 threads: after base, LoRA and the ReFT-only
    branch are both ready."""
    from heft.grids.spec import GridSpec
    overrides = (f"model.name={tiny_llama}", "model.max_length=32", f"data.source={keyword_data}",
                 "data.holdout_size=60", "data.valid_size=40", "data.max_train=240", "lora.lr=1e-2",
                 "reft.lr=1e-2", "reft.layer=1", "lora.epochs=3", "reft.epochs=2",
                 f"artifact_root={tmp}/{root}", f"tracking_uri=sqlite:///{tmp}/mlflow.db", *extra)
    return GridSpec(name=f"threads-{root}", preset="deployments/stories-boolq.yaml", overrides=overrides,
                    cells=CELLS, workers=2)


def open_runs(tmp) -> list[str]:
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exps = [e.experiment_id for e in client.search_experiments()]
    return [f"{r.info.run_name} {r.info.status}" for r in client.search_runs(exps, max_results=1000)
            if r.info.status == "RUNNING"]


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("threads")


def test_two_workers_start_the_reft_only_branch_beside_lora(harness, tiny_llama, keyword_data, grid_dir,
                                                            monkeypatch):
    """Every step once and every cell done; ReFT-only's ReFT, which needs only base, starts before
    LoRA ends (submitting every step at once with its parent's future parked LoRA's children on
    both threads until LoRA ended)."""
    import json
    import socket
    import subprocess

    from mlflow import MlflowClient
    from flows.grid_flow import heft_grid
    from heft.tracking import Tracker
    log = grid_dir / "builds.jsonl"
    monkeypatch.setenv("HEFT_BUILD_LOG", str(log))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a run a killed heft process left RUNNING: the grid's start closes it
    orphan = Tracker.start(f"sqlite:///{grid_dir}/mlflow.db", "heft", "left by kill -9", params={})
    process = {"heft.host": socket.gethostname(), "heft.pid": str(gone.pid), "heft.pid_started": ""}
    for key, value in process.items():
        MlflowClient(orphan.uri).set_tag(orphan.run_id, key, value)
    out = heft_grid(spec=threads_grid(tiny_llama, keyword_data, grid_dir, "order"),
                    report_dir=str(grid_dir / "report-order"))
    builds = [json.loads(line) for line in log.read_text().splitlines()]
    keys = [(b["stage"], b["key"]) for b in builds]
    assert len(keys) == len(set(keys)) == 10  # data base lora merge reft + 3 evaluations; reft + evaluation
    reft_only = next(c for c in out["cells"] if c["label"] == "ReFT-only")
    branch = next(s["key"] for s in reft_only["stages"] if s["stage"] == "reft")
    lora = next(b for b in builds if b["stage"] == "lora")
    reft = next(b for b in builds if b["key"] == branch)
    assert reft["started"] < lora["finished"], "the ReFT-only branch waited for LoRA"
    assert all(c["accuracy"] is not None for c in out["cells"])
    assert open_runs(grid_dir) == []
    assert MlflowClient(orphan.uri).get_run(orphan.run_id).info.status == "KILLED"


@pytest.fixture
def run_logs():
    """The messages of Prefect's flow- and task-run loggers and heft's event lines (Prefect
    configures logging on its first run in a process, which takes caplog's handler off the root
    logger)."""
    import logging

    from prefect.logging.configuration import ensure_logging_setup
    ensure_logging_setup()  # now, not at the first flow run, which would drop the handler below
    kept: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            kept.append(record.getMessage())
    handler = Keep(level=logging.INFO)
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs", "heft.events")]
    for logger in loggers:
        logger.addHandler(handler)
    yield kept
    for logger in loggers:
        logger.removeHandler(handler)


def test_a_failed_step_is_reported_once_with_its_cells(harness, tiny_llama, keyword_data, grid_dir,
                                                      monkeypatch, run_logs):
    """LoRA fails: it is named once in the logs, with its cell; the steps that needed it never
    start and are named; the error raised is one short line; no MLflow run is left RUNNING.
    (Before: the list of failures, as the message of the error, was logged by both flows and
    printed again by the CLI, with no cell named.)"""
    import heft.stages.lora
    from flows.grid_flow import heft_grid
    from heft.grids.plan import plan_cells
    from heft.grids.spec import expand

    def broken(cfg, parent, ctx):
        raise RuntimeError("lora broke on purpose\n" + "a long second line\n" * 50)
    monkeypatch.setattr(heft.stages.lora, "train_lora", broken)
    spec = threads_grid(tiny_llama, keyword_data, grid_dir, "fail")
    lora_key = plan_cells(expand(spec))[0]["lora"].key
    with pytest.raises(Exception) as raised:
        heft_grid(spec=spec, report_dir=str(grid_dir / "report-fail"))
    logged = run_logs
    named = [m for m in logged if lora_key in m and "lora broke on purpose" in m]
    assert len(named) == 1, "\n---\n".join(named)
    assert "lora (cell HEFT seed=0)" in named[0]
    assert type(raised.value).__name__ == "StepsFailed" and "a long second line" not in str(raised.value)
    held = [m for m in logged if "not run, a step they need failed" in m]
    assert len(held) == 1 and "merge (cell HEFT seed=0)" in held[0] and "evaluate:heft" in held[0]
    assert open_runs(grid_dir) == []


def test_an_interrupted_grid_stops_its_threads_and_leaves_nothing_running(harness, tiny_llama, keyword_data,
                                                                          grid_dir):
    """Ctrl-C (SIGINT to this process) while LoRA and the ReFT-only branch train on the two worker
    threads: the grid stops within seconds (both threads at their next step, not after 200
    epochs), every MLflow run (grid, cells, stages) is KILLED, no Prefect flow or task run is
    left RUNNING, and the interrupt is recorded as having stopped both, each with its cell."""
    import os
    import signal
    import time

    from prefect import get_client
    from flows.grid_flow import heft_grid
    from heft import progress

    def interrupt_once_lora_trains():
        checkpoints = grid_dir / "stop" / "checkpoints" / "lora"  # LoRA's first epoch is saved

        def saved() -> bool:  # the folder can change under the listing: an error here must not
            try:              # end this thread silently (the grid would then never be interrupted)
                return checkpoints.is_dir() and any(checkpoints.iterdir())
            except OSError:
                return False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not saved():
            time.sleep(0.2)
        time.sleep(0.5)
        stopped_at.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)
    stopped_at: list[float] = []
    watcher = threading.Thread(target=interrupt_once_lora_trains, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        heft_grid(spec=threads_grid(tiny_llama, keyword_data, grid_dir, "stop", "lora.epochs=200",
                                    "reft.epochs=200"),
                  report_dir=str(grid_dir / "report-stop"))
    seconds = time.monotonic() - stopped_at[0]
    assert seconds < 30, f"took {seconds:.0f} s to stop"
    assert open_runs(grid_dir) == []
    with get_client(sync_client=True) as client:
        running = [f"task {r.name} {r.state_type.value}" for r in client.read_task_runs()
                   if r.state_type is None or not r.state.is_final()]
        running += [f"flow {r.name} {r.state_type.value}" for r in client.read_flow_runs()
                    if not r.state.is_final()]
    assert running == []
    progress.check_stop()  # cleared once the threads ended: later work in this process runs
    stopped = sorted(progress.interrupted_during())
    assert stopped == ["lora (cell HEFT seed=0)", "reft (cell ReFT-only seed=0)"], stopped
