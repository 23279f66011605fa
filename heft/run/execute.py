"""Run steps: the one loop that finds or builds a plan's artifacts and rebuilds what was damaged.

``execute(steps, store, runner)`` hands the steps, parents first, and the keys already in the
store to a *runner*, which finds or builds every step and returns an ``Outcome`` per key.  The
runner decides where the work happens:

* ``sequential`` (here): one step after the other in this process (tests, notebooks, benches);
* the ``heft`` flow: each step a Prefect task with its MLflow stage run (flows/runners.py);
* a grid: every unique step of every cell submitted at once to a Prefect task runner (threads
  or Dask), each with its parent's future (flows/runners.py).

A stage that reads a damaged artifact sets it aside and raises ``DamagedArtifact``: walking the
steps again rebuilds it, at most ``REBUILDS`` times per run.  ``built`` (which keys the store
already holds) is computed once per walk, here or by validation, and passed down.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable

from heft.config import RunConfig
from heft.progress import Progress, clear_stop
from heft.plan import Plan, Step, plan
from heft.stages import run_step
from heft.store.artifacts import Artifact, ArtifactStore
from heft.store.damage import DamagedArtifact

REBUILDS = 2  # how many damaged artifacts one run rebuilds before giving up
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What running one step gave."""
    step: Step
    artifact: Artifact
    state: str        # Completed or Cached (Prefect's state names; the plain runner uses the same)
    reused: bool      # the artifact was in the store before this walk


class StepsFailed(RuntimeError):
    """Steps of a grid failed; the runner has named each, with its cells, where it failed."""


# runner(steps, built keys) -> {key: Outcome}; raises DamagedArtifact after setting one aside
Runner = Callable[[list[Step], set[str]], dict[str, Outcome]]


def built_keys(steps: Iterable[Step], store: ArtifactStore) -> set[str]:
    """The keys of ``steps`` whose artifacts are in the store, complete (nothing is built)."""
    return {s.key for s in steps if store.find(s.stage, s.key) is not None}


def built(the_plan: Plan, store: ArtifactStore) -> dict[str, Artifact]:
    """{step name: artifact} of the plan's steps already in the store (nothing is built)."""
    found = {step.name: store.find(step.stage, step.key) for step in the_plan.steps}
    return {name: art for name, art in found.items() if art is not None}


def execute(steps: list[Step], store: ArtifactStore, runner: Runner,
            built: set[str] | None = None) -> dict[str, Outcome]:
    """{key: Outcome} for every step, found or built by ``runner``; a damaged artifact is set
    aside by the stage that found it and rebuilt by walking the steps again."""
    clear_stop()  # an earlier run in this process may have been interrupted
    for attempt in range(REBUILDS + 1):
        if built is None:
            built = built_keys(steps, store)
        try:
            return runner(steps, built)
        except DamagedArtifact as e:
            if attempt == REBUILDS:
                raise
            log.warning("%s: running the steps again", e)
            built = None
    raise AssertionError("unreachable")


def sequential(store: ArtifactStore, progress: Progress | None = None) -> Runner:
    """The plain runner: each step in this process, in order, no Prefect."""
    def run(steps: list[Step], built: set[str]) -> dict[str, Outcome]:
        done: dict[str, Outcome] = {}
        for step in steps:
            parent = done[step.parent_key].artifact if step.parent_key else None
            art = run_step(step, parent, store, progress)
            reused = step.key in built
            done[step.key] = Outcome(step, art, "Cached" if reused else "Completed", reused)
        return done
    return run


def run_plan(the_plan: Plan, store: ArtifactStore | None = None,
             progress: Progress | None = None) -> dict[str, Artifact]:
    """{step name: artifact} for every step of the plan, built where missing."""
    store = store or ArtifactStore(the_plan.config.artifact_root)
    done = execute(list(the_plan.steps), store, sequential(store, progress))
    return {step.name: done[step.key].artifact for step in the_plan.steps}


def run_pipeline(cfg: RunConfig, store: ArtifactStore | None = None,
                 progress: Progress | None = None) -> dict[str, Artifact]:
    """Plan ``cfg`` and run it: {'data': ..., 'lora': ..., 'eval:heft': ...}."""
    return run_plan(plan(cfg), store, progress)
