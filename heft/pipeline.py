"""Run a plan without Prefect (tests, notebooks, the study's read-back): each step is found
or built in order, its parent being the artifact of the step before it in the chain.

The Prefect flows walk the same plan (flows/heft_flow.py), each step a cached task.
"""
from __future__ import annotations

import logging

from heft.config import RunConfig
from heft.plan import Plan, plan
from heft.progress import Progress
from heft.stages import run_step
from heft.store.artifacts import Artifact, ArtifactStore
from heft.store.damage import DamagedArtifact

REBUILDS = 2  # how many damaged artifacts one run rebuilds before giving up
log = logging.getLogger(__name__)


def run_plan(the_plan: Plan, store: ArtifactStore | None = None,
             progress: Progress | None = None) -> dict[str, Artifact]:
    """{step name: artifact} for every step of the plan, built where missing."""
    store = store or ArtifactStore(the_plan.config.artifact_root)
    for attempt in range(REBUILDS + 1):
        by_key: dict[str, Artifact] = {}
        try:
            for step in the_plan.steps:
                by_key[step.key] = run_step(step, by_key.get(step.parent_key), store, progress)
            return {step.name: by_key[step.key] for step in the_plan.steps}
        except DamagedArtifact as e:  # set aside already: walking the plan again rebuilds it
            if attempt == REBUILDS:
                raise
            log.warning("%s: running the plan again", e)


def run_pipeline(cfg: RunConfig, store: ArtifactStore | None = None,
                 progress: Progress | None = None) -> dict[str, Artifact]:
    """Plan ``cfg`` and run it: {'data': ..., 'lora': ..., 'eval:heft': ...}."""
    return run_plan(plan(cfg), store, progress)


def built(the_plan: Plan, store: ArtifactStore) -> dict[str, Artifact]:
    """{step name: artifact} of the steps already in the store (nothing is built)."""
    found = {step.name: store.find(step.stage, step.key) for step in the_plan.steps}
    return {name: art for name, art in found.items() if art is not None}


def summary(out: dict[str, Artifact]) -> str:
    """Accuracy lines with 95% intervals and the held-out majority rate."""
    lines = []
    for name, art in out.items():
        if name.startswith("eval:"):
            m = art.metrics
            lines.append(f"{name[5:]:>9}: accuracy {m['accuracy']:.2%} "
                         f"(95% CI {m['ci95_low']:.2%}-{m['ci95_high']:.2%}, n={m['n']}), "
                         f"held-out majority rate {m['majority_rate']:.2%}")
    return "\n".join(lines)
