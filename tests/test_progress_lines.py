"""Without a terminal (a log file, CI, a Kubernetes job) a training stage is never silent: it
says where it is every N optimizer steps and at least once a minute.  A 5-minute LoRA stage of
the tiny Llama, its minutes made by a clock that moves 10 s per optimizer step; the real
training loop, the real step-line rule (heft/progress.py); the lines read from the
``heft.events`` logger that the ``heft`` command prints.  (Before: no line between epochs, and
none at all on a one-epoch stage.)"""
from __future__ import annotations

import io
import logging

import pytest

from heft.plan import plan
from heft.progress import Progress
from heft.stages import run_step
from heft.store.artifacts import ArtifactStore

STEP_SECONDS = 10.0  # what each optimizer step "takes" on the test's clock


class StepClock:
    """A clock that moves STEP_SECONDS per optimizer step (the on_step hook, every step)."""
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, step: int, metrics: dict) -> None:
        self.now = step * STEP_SECONDS


@pytest.fixture
def events(caplog):
    caplog.set_level(logging.INFO, logger="heft.events")
    return caplog


def step_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "heft.events" and " step " in r.getMessage()]


def test_a_stage_without_a_terminal_says_where_it_is_at_least_once_a_minute(tiny_config, tmp_path, events,
                                                                              monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: no progress bar can be drawn
    monkeypatch.delenv("HEFT_PROGRESS_SECONDS", raising=False)
    monkeypatch.setenv("HEFT_PROGRESS_STEPS", "1000")  # the per-minute rule alone must do it
    cfg = tiny_config(tmp_path, mode="lora-only")
    steps = plan(cfg)
    store = ArtifactStore(cfg.artifact_root)
    data = run_step(steps["data"], None, store)
    base = run_step(steps["base"], data, store)
    clock, said_at = StepClock(), []
    progress = Progress(on_step=clock.tick, every=1, label="lora · seed=0", clock=clock,
                        on_line=lambda done: said_at.append(clock.now))
    assert progress.lines and progress.line_seconds == 60  # the defaults off a terminal
    run_step(steps["lora"], base, store, progress)
    lines = step_lines(events)
    stage_seconds = clock.now
    assert stage_seconds >= 240, "the stage must last minutes on the test's clock"
    assert len(lines) == len(said_at) >= stage_seconds // (60 + STEP_SECONDS)
    # the rule: from the start to the end, no gap between two lines longer than a minute (plus
    # the step in flight when the minute ran out)
    gaps = [b - a for a, b in zip([0.0, *said_at], [*said_at, stage_seconds])]
    assert max(gaps) <= 60 + STEP_SECONDS, (gaps, lines)
    assert all(line.startswith("lora · seed=0: epoch ") and "loss " in line and "s/step" in line
               and "stage ETA" in line for line in lines), lines


def test_every_n_steps_too_and_no_step_lines_on_a_terminal(tiny_config, tmp_path, events, monkeypatch):
    cfg = tiny_config(tmp_path, mode="lora-only")
    steps = plan(cfg)
    store = ArtifactStore(cfg.artifact_root)
    data = run_step(steps["data"], None, store)
    base = run_step(steps["base"], data, store)
    # every 4 steps on a clock that never moves: the step count alone brings the lines
    run_step(steps["lora"], base, store, Progress(label="lora", lines=True, line_steps=4, clock=lambda: 0.0))
    spe = -(-int(data.metrics["n_train"]) // cfg.lora.batch_size)
    assert len(step_lines(events)) == (spe * cfg.lora.epochs) // 4
    events.clear()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True
    monkeypatch.setattr("sys.stderr", Terminal())
    assert Progress().lines is False  # a terminal shows tqdm's bar instead
