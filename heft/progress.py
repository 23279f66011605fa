"""How long work reports its progress, what this process is doing now, and how it is stopped.

A training stage calls ``on_epoch(epoch, metrics)`` after each epoch and
``on_step(step, metrics)`` every ``every`` optimizer steps (``step`` counts optimizer steps
from the start of the stage, so a resumed stage continues the same axis).  The Prefect
tasks turn them into MLflow curves, run-log lines and a progress artifact; plain library
calls leave them unset.

An interrupt reaches the main thread only.  A grid's stages on worker threads are stopped by
``request_stop()``: training (every optimizer step) and scoring (every batch) call
``check_stop()``, which raises ``Stopped`` (a KeyboardInterrupt: runs close as KILLED, tasks
are not retried).  ``doing`` records which steps run now, and ``interrupted_during`` which ran
when an interrupt came, for the message of an interrupted run (flows/cli.py).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

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


EpochCallback = Callable[[int, dict], None]
StepCallback = Callable[[int, dict], None]


@dataclass
class Progress:
    on_epoch: EpochCallback | None = None
    on_step: StepCallback | None = None
    every: int = 10

    def epoch(self, epoch: int, metrics: dict) -> None:
        if self.on_epoch:
            self.on_epoch(epoch, metrics)

    def due(self, step: int, steps_per_epoch: int = 0) -> bool:
        """Whether optimizer step ``step`` reports: every ``every`` steps, or, when a step callback
        listens, more often in short epochs (at least 5 points per epoch).  Training reads its
        device-side loss only then (and at the end of each epoch)."""
        every = self.every
        if steps_per_epoch and self.on_step:
            every = min(every, max(1, steps_per_epoch // 5))
        return step % every == 0

    def step(self, step: int, metrics: dict, steps_per_epoch: int = 0) -> None:
        """Reports when ``due``; raises ``Stopped`` once the run was interrupted."""
        check_stop()
        if self.on_step and self.due(step, steps_per_epoch):
            self.on_step(step, metrics)
