"""One Prefect task per heft stage, and the per-stage MLflow run around it.

The task cache key is the planned step's own key (stage config + parent key + inputs +
format version, heft/store/keys.py) plus the normalised artifact root, never the flow-run
id and never a model object, so Prefect reports ``Cached`` exactly when heft would reuse
the artifact.  Results are persisted (small pickled ``Artifact`` records; the weights live
in the artifact store).  Training stages are not retried: a failure there is a bug or a bad
config, not a blip; the others retry transient storage faults.
"""
from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.logging import get_run_logger

from heft.plan import Step
from heft.stages import run_step
from heft.store.artifacts import Artifact, ArtifactStore
from heft.store.fs import normalize_root
from heft.store.keys import digest
from heft.tracking import Tracker, stage_params


def step_cache_key(context, parameters: dict) -> str:
    """Prefect's cache key of a stage task: the step's key and where its artifact lives."""
    step: Step = parameters["step"]
    return f"heft-{step.stage}-{step.key}-{digest(normalize_root(parameters['root']), 8)}"


def step_task_name() -> str:
    """Task-run names that say what they produce: 'lora', 'evaluate:merged'."""
    from prefect.runtime import task_run
    return task_run.parameters["step"].label


def _build(step: Step, parent: Artifact | None, root: str, run: Tracker | None) -> Artifact:
    art = run_step(step, parent, ArtifactStore(root), run.progress() if run else None)
    get_run_logger().info("%s artifact %s at %s", step.label, art.key, art.uri)
    return art


TASK_OPTIONS = dict(cache_key_fn=step_cache_key, persist_result=True, task_run_name=step_task_name)


@task(name="data", retries=2, retry_delay_seconds=[5, 30], **TASK_OPTIONS)
def data_task(step: Step, parent: None, root: str, run: Tracker | None = None) -> Artifact:
    """Load, validate and split the data (or return the finished split)."""
    return _build(step, parent, root, run)


@task(name="base", retries=2, retry_delay_seconds=[5, 30], **TASK_OPTIONS)
def base_task(step: Step, parent: Artifact, root: str, run: Tracker | None = None) -> Artifact:
    """Record the base model the chain starts from (or return the record)."""
    return _build(step, parent, root, run)


@task(name="lora", retries=0, **TASK_OPTIONS)
def lora_task(step: Step, parent: Artifact, root: str, run: Tracker | None = None) -> Artifact:
    """Train the LoRA adapter (or return the finished one)."""
    return _build(step, parent, root, run)


@task(name="merge", retries=1, retry_delay_seconds=[5], **TASK_OPTIONS)
def merge_task(step: Step, parent: Artifact, root: str, run: Tracker | None = None) -> Artifact:
    """Merge the LoRA adapter into the base weights (or return the merged model)."""
    return _build(step, parent, root, run)


@task(name="reft", retries=0, **TASK_OPTIONS)
def reft_task(step: Step, parent: Artifact, root: str, run: Tracker | None = None) -> Artifact:
    """Train the LoReFT intervention on the frozen model (or return the finished one)."""
    return _build(step, parent, root, run)


@task(name="evaluate", retries=1, retry_delay_seconds=[5], **TASK_OPTIONS)
def evaluate_task(step: Step, parent: Artifact, root: str, run: Tracker | None = None) -> Artifact:
    """Score the held-out split with the parent's model (or return the scores)."""
    return _build(step, parent, root, run)


STAGE_TASKS = {"data": data_task, "base": base_task, "lora": lora_task, "merge": merge_task,
               "reft": reft_task, "evaluate": evaluate_task}


@dataclass(frozen=True)
class StepResult:
    step: Step
    artifact: Artifact
    state: str        # Prefect's state name: Completed, Cached
    reused: bool      # the artifact was in the store before the task ran

    def row(self) -> dict:
        return {"stage": self.step.stage, "key": self.step.key, "state": self.state,
                "cache": "reused" if self.reused else "ran"}


def run_step_task(step: Step, parent: Artifact | None, store: ArtifactStore, pipeline: Tracker,
                  reused: bool) -> StepResult:
    """Run ``step`` as its stage task inside an MLflow stage run nested under ``pipeline``.

    ``reused`` says the artifact is already in the store; otherwise the task's Prefect cache
    is refreshed, so a stale cache record never stands in for a missing artifact."""
    with pipeline.child(step.label, stage_params(step.stage, step.config)) as run:
        state = STAGE_TASKS[step.stage].with_options(refresh_cache=not reused)(
            step, parent, store.root, run, return_state=True)
        art = state.result()
        run.record_artifact(art, reused, local_dir=store.local_path(art))
    return StepResult(step, art, state.name, reused)
