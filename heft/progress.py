"""How long work reports its progress, what this process is doing now, and how it is stopped.

A training stage calls ``on_epoch(epoch, metrics)`` after each epoch and
``on_step(step, metrics)`` every ``every`` optimizer steps (``step`` counts optimizer steps
from the start of the stage, so a resumed stage continues the same axis).  The Prefect
tasks turn them into MLflow curves, run-log lines and a progress artifact; plain library
calls leave them unset.

What a person watching should see goes to the ``heft.events`` logger, one line per event
(``say``): a stage started, an epoch with its loss and validation accuracy, a stage done
with its seconds, a step found cached, a grid's steps done and its ETA.  Where no progress
bar can be drawn (a log file, CI, a Kubernetes job: stderr is not a terminal) a training
stage with ``lines`` also says where it is every ``line_steps`` optimizer steps and at least
every ``line_seconds`` (HEFT_PROGRESS_STEPS, default 200; HEFT_PROGRESS_SECONDS, default 60),
so a 395 s epoch is never silent.  The ``heft`` command prints these lines and keeps the
libraries' chatter out (flows/console.py); the Prefect tasks also send them to the run's log.

An interrupt reaches the main thread only.  A grid's stages on worker threads are stopped by
``request_stop()``: training (every optimizer step) and scoring (every batch) call
``check_stop()``, which raises ``Stopped`` (a KeyboardInterrupt: runs close as KILLED, tasks
are not retried).  ``doing`` records which steps run now, and ``interrupted_during`` which ran
when an interrupt came, for the message of an interrupted run (flows/cli.py).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

EVENTS = logging.getLogger("heft.events")

_STOP = threading.Event()
_DOING: dict[object, str] = {}
_DOING_LOCK = threading.Lock()
_INTERRUPTED: list[str] = []  # what ran when the last interrupt came


class Stopped(KeyboardInterrupt):
    """Raised in a worker at its next step once the run it belongs to was interrupted."""


def request_stop() -> None:
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()


def check_stop() -> None:
    if _STOP.is_set():
        raise Stopped("the run was interrupted; stopped between steps")


def started(what: str) -> object:
    """Record ``what`` ('lora (cell HEFT 3+3 seed=0)') as running; ``ended(token)`` ends it."""
    token = object()
    with _DOING_LOCK:
        _DOING[token] = what
    return token


def ended(token: object) -> None:
    with _DOING_LOCK:
        _DOING.pop(token, None)


def interrupted(tokens: list[object]) -> None:
    """Remember what the tokens stand for as what an interrupt stopped."""
    with _DOING_LOCK:
        _INTERRUPTED[:] = [_DOING[t] for t in tokens if t in _DOING]


def interrupted_during() -> list[str]:
    with _DOING_LOCK:
        return list(_INTERRUPTED)


@contextmanager
def doing(what: str) -> Iterator[None]:
    token = started(what)
    try:
        yield
    except BaseException as e:
        if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit, Prefect's TerminationSignal
            interrupted([token])
        raise
    finally:
        ended(token)


def now_doing() -> list[str]:
    """What runs now in this process, oldest first."""
    with _DOING_LOCK:
        return list(_DOING.values())


def say(line: str) -> None:
    """One line for a person watching the run (see the module docstring)."""
    EVENTS.info(line)


def duration(seconds: float) -> str:
    """'48 s', '3 min 20 s', '1 h 05 min'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


EpochCallback = Callable[[int, dict], None]
StepCallback = Callable[[int, dict], None]


@dataclass
class Progress:
    on_epoch: EpochCallback | None = None
    on_step: StepCallback | None = None
    every: int = 10
    label: str = ""  # who trains: 'lora · seed=0' (the lines below and the progress bar say it)
    # step lines ('lora · seed=0: epoch 1/3 step 40/380 ...'): by default only where stderr is
    # not a terminal (a terminal gets a progress bar instead)
    lines: bool = field(default_factory=lambda: not sys.stderr.isatty())
    line_steps: int = field(default_factory=lambda: int(_env_number("HEFT_PROGRESS_STEPS", 200)))
    line_seconds: float = field(default_factory=lambda: _env_number("HEFT_PROGRESS_SECONDS", 60))
    clock: Callable[[], float] = time.monotonic
    on_line: Callable[[float], None] | None = None  # told the stage's fraction done at each step line
    fraction: float = 0.0  # of the stage's optimizer steps done (known once training has started)
    # the (step, time) of the last step line
    _last: tuple[int, float] | None = field(default=None, init=False, repr=False)

    def epoch(self, epoch: int, metrics: dict) -> None:
        if self.on_epoch:
            self.on_epoch(epoch, metrics)

    def due(self, step: int, steps_per_epoch: int = 0) -> bool:
        """Whether optimizer step ``step`` reports: every ``every`` steps, or, when a step callback
        listens, more often in short epochs (at least 5 points per epoch); or a step line is due.
        Training reads its device-side loss only then (and at the end of each epoch)."""
        return step % self._interval(steps_per_epoch) == 0 or self._wants_line(step, steps_per_epoch)

    def step(self, step: int, metrics: dict, steps_per_epoch: int = 0, epochs: int = 0) -> None:
        """Called when ``due``: the step callback at its interval, a step line when one is due.
        (Training checks for an interrupt itself, every step.)"""
        if epochs and steps_per_epoch:
            self.fraction = step / (epochs * steps_per_epoch)
        if self.on_step and step % self._interval(steps_per_epoch) == 0:
            self.on_step(step, metrics)
        if self._wants_line(step, steps_per_epoch):
            self._say_step(step, metrics, steps_per_epoch, epochs)

    def _interval(self, steps_per_epoch: int) -> int:
        if steps_per_epoch and self.on_step:
            return min(self.every, max(1, steps_per_epoch // 5))
        return self.every

    def _wants_line(self, step: int, steps_per_epoch: int) -> bool:
        return bool(self.lines and steps_per_epoch and self._line_due(step))

    def start(self, step: int = 0) -> None:
        """Training starts (or resumes) at ``step``: the clock of the step lines starts here."""
        self._last = (step, self.clock())

    def _line_due(self, step: int) -> bool:
        if self._last is None:
            self.start(step - 1)
        last_step, last_time = self._last
        return step - last_step >= max(1, self.line_steps) or self.clock() - last_time >= self.line_seconds

    def _say_step(self, step: int, metrics: dict, steps_per_epoch: int, epochs: int) -> None:
        last_step, last_time = self._last
        now = self.clock()
        per_step = (now - last_time) / max(1, step - last_step)
        epoch, in_epoch = (step - 1) // steps_per_epoch + 1, (step - 1) % steps_per_epoch + 1
        total = epochs * steps_per_epoch
        left = f", stage ETA {duration(per_step * (total - step))}" if total else ""
        loss = metrics.get("train_loss_epoch", metrics.get("train_loss_step"))
        say(f"{self.label or 'training'}: epoch {epoch}/{epochs or '?'} step {in_epoch}/{steps_per_epoch}, "
            f"loss {loss:.4f}, {per_step:.2f} s/step{left}")
        self._last = (step, now)
        if self.on_line and total:
            self.on_line(step / total)
