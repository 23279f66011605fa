"""How long work reports its progress: callbacks after every epoch and every N optimizer steps.

A training stage calls ``on_epoch(epoch, metrics)`` after each epoch and
``on_step(step, metrics)`` every ``every`` optimizer steps (``step`` counts optimizer steps
from the start of the stage, so a resumed stage continues the same axis).  The Prefect
tasks turn them into MLflow curves, run-log lines and a progress artifact; plain library
calls leave them unset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
        if self.on_step and self.due(step, steps_per_epoch):
            self.on_step(step, metrics)
