"""One Prefect task per heft stage, and the per-stage MLflow run around it.

The task cache key is the planned step's own key (stage config + parent key + inputs +
format version, heft/store/keys.py) plus the normalised artifact root, never the flow-run
id and never a model object, so Prefect reports ``Cached`` exactly when heft would reuse
the artifact.  Results are persisted (small pickled ``Artifact`` records; the weights live
in the artifact store).  Training stages are not retried: a failure there is a bug or a bad
config, not a blip; the others retry transient storage faults.
"""
from __future__ import annotations

import logging
import re
import time

from prefect import task
from prefect.logging import get_run_logger

from heft.progress import EVENTS, Progress, duration, say
from heft.run.execute import Outcome
from heft.plan import Step
from heft.stages import run_step
from heft.store.artifacts import Artifact, ArtifactStore
from heft.store.fs import normalize_root
from heft.store.keys import digest
from heft.tracking import Tracker, stage_params
from heft.tracking.context import system_monitor

MONITORED = ("lora", "merge", "reft", "evaluate")


def step_cache_key(context, parameters: dict) -> str:
    """Prefect's cache key of a stage task: the step's key and where its artifact lives."""
    step: Step = parameters["step"]
    return f"heft-{step.stage}-{step.key}-{digest(normalize_root(parameters['root']), 8)}"


def slug(text: str) -> str:
    """'reft-layers-heft-20-20-x0-1-2-2-seed-0': what Prefect accepts as an artifact key."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def step_task_name() -> str:
    """Task-run names that say what they produce: 'reft · layer=1 · seed=0', 'evaluate:heft · <cell>'."""
    from prefect.runtime import task_run
    return task_run.parameters["step"].title


class InRunContext(logging.Filter):
    """Only records said inside a Prefect flow or task run (the API handler needs its run id)."""
    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext
        return bool(TaskRunContext.get() or FlowRunContext.get())


def events_to_prefect() -> None:
    """heft's event lines (heft.events: a stage started, an epoch, a step line, done) also go to
    the log of the Prefect run they are said in, so the UI's run logs read like the terminal."""
    from prefect.logging.handlers import APILogHandler
    if not any(isinstance(h, APILogHandler) for h in EVENTS.handlers):
        handler = APILogHandler()
        handler.addFilter(InRunContext())
        EVENTS.addHandler(handler)
    if EVENTS.level == logging.NOTSET or EVENTS.level > logging.INFO:
        EVENTS.setLevel(logging.INFO)


events_to_prefect()


def _build(step: Step, parent: Artifact | None, root: str, run: Tracker | None, live: bool) -> Artifact:
    """Build (or find) the step's artifact; with ``live``, per-step and per-epoch metrics go to
    ``run`` while it trains (otherwise the flow replays them from history.json afterwards)."""
    from prefect.runtime import task_run
    provenance = {"prefect_task_run_id": str(task_run.id), "mlflow_run_id": run.run_id if run else None}
    progress = prefect_progress(step, run.progress() if run and live else Progress())
    # system metrics are sampled here, in the process that does the work (a Dask worker's
    # host, not the flow's), and only for stages that load a model
    monitor = system_monitor(run.run_id, run.uri) if run and step.stage in MONITORED else None
    try:
        art = run_step(step, parent, ArtifactStore(root), progress, provenance)
    finally:
        if monitor is not None:
            monitor.finish()  # before the run closes: the sampler stops at a closed run
    get_run_logger().info("%s artifact %s at %s", step.label, art.key, art.uri)
    return art


ARTIFACT_EVERY_S = 30.0  # how often a training stage's Prefect progress card moves between epochs


def prefect_progress(step: Step, mlflow: Progress) -> Progress:
    """``mlflow``'s callbacks plus, for a training stage, its name on the progress bar and the
    step lines, one event line per epoch (terminal and run log), and a Prefect progress artifact
    that moves with the optimizer steps (every 30 s at most), not only once per epoch."""
    if step.stage not in ("lora", "reft"):
        return mlflow
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    epochs = max(1, step.config.epochs)
    artifact = create_progress_artifact(0.0, key=slug(f"{step.title}-{step.key[:8]}"),
                                        description=f"{step.title} ({step.key}): share of its {epochs} "
                                                    "epoch(s) of optimizer steps done")
    moved = [time.monotonic()]

    def on_epoch(epoch: int, metrics: dict) -> None:
        valid = metrics.get("valid_accuracy")
        said = f", validation {valid:.2%}" if valid is not None else ""
        say(f"{step.title}: epoch {epoch}/{epochs}, train loss {metrics['train_loss']:.4f}{said}, "
            f"{duration(metrics['epoch_seconds'])}")
        update_progress_artifact(artifact, 100.0 * epoch / epochs)
        moved[0] = time.monotonic()
        if mlflow.on_epoch:
            mlflow.on_epoch(epoch, metrics)

    def on_step(at: int, metrics: dict) -> None:
        if mlflow.on_step:
            mlflow.on_step(at, metrics)
        if time.monotonic() - moved[0] >= ARTIFACT_EVERY_S and progress.fraction:
            update_progress_artifact(artifact, 100.0 * progress.fraction)
            moved[0] = time.monotonic()
    progress = Progress(on_epoch=on_epoch, on_step=on_step, every=mlflow.every, label=step.title)
    return progress


TASK_OPTIONS = dict(cache_key_fn=step_cache_key, persist_result=True, task_run_name=step_task_name)


@task(name="data", retries=2, retry_delay_seconds=[5, 30], **TASK_OPTIONS)
def data_task(step: Step, parent: None, root: str, run: Tracker | None = None,
             live: bool = True) -> Artifact:
    """Load, validate and split the data (or return the finished split)."""
    return _build(step, parent, root, run, live)


@task(name="base", retries=2, retry_delay_seconds=[5, 30], **TASK_OPTIONS)
def base_task(step: Step, parent: Artifact, root: str, run: Tracker | None = None,
             live: bool = True) -> Artifact:
    """Record the base model the chain starts from (or return the record)."""
    return _build(step, parent, root, run, live)


@task(name="lora", retries=0, **TASK_OPTIONS)
def lora_task(step: Step, parent: Artifact, root: str, run: Tracker | None = None,
             live: bool = True) -> Artifact:
    """Train the LoRA adapter (or return the finished one)."""
    return _build(step, parent, root, run, live)


@task(name="merge", retries=1, retry_delay_seconds=[5], **TASK_OPTIONS)
def merge_task(step: Step, parent: Artifact, root: str, run: Tracker | None = None,
              live: bool = True) -> Artifact:
    """Merge the LoRA adapter into the base weights (or return the merged model)."""
    return _build(step, parent, root, run, live)


@task(name="reft", retries=0, **TASK_OPTIONS)
def reft_task(step: Step, parent: Artifact, root: str, run: Tracker | None = None,
             live: bool = True) -> Artifact:
    """Train the LoReFT intervention on the frozen model (or return the finished one)."""
    return _build(step, parent, root, run, live)


@task(name="evaluate", retries=1, retry_delay_seconds=[5], **TASK_OPTIONS)
def evaluate_task(step: Step, parent: Artifact, root: str, run: Tracker | None = None,
                 live: bool = True) -> Artifact:
    """Score the held-out split with the parent's model (or return the scores)."""
    return _build(step, parent, root, run, live)


STAGE_TASKS = {"data": data_task, "base": base_task, "lora": lora_task, "merge": merge_task,
               "reft": reft_task, "evaluate": evaluate_task}


def run_step_task(step: Step, parent: Artifact | None, store: ArtifactStore, pipeline: Tracker,
                  reused: bool) -> Outcome:
    """Run ``step`` as its stage task.  A step to build gets an MLflow stage run nested under
    ``pipeline`` (per-step curves live, files, final metrics); a step already in the store gets
    none, only a link on ``pipeline`` to the run that built it, so a cached rerun adds one run.

    ``reused`` says the artifact is already in the store; otherwise the task's Prefect cache
    is refreshed, so a stale cache record never stands in for a missing artifact."""
    task = STAGE_TASKS[step.stage].with_options(refresh_cache=not reused)
    if reused:
        state = task(step, parent, store.root, None, return_state=True)
        art = state.result()
        link_builder(pipeline, step, art)
        return Outcome(step, art, state.name, reused)
    with pipeline.child(step.title, stage_params(step.stage, step.config)) as run:
        state = task(step, parent, store.root, run, return_state=True)
        art = state.result()
        run.record_artifact(art, local_dir=store.local_path(art))
    return Outcome(step, art, state.name, reused)


def link_builder(pipeline: Tracker, step: Step, art: Artifact) -> None:
    """Tag ``pipeline`` with the MLflow run that built a reused step's artifact."""
    builder = art.meta.get("build", {}).get("mlflow_run_id") or "unknown"
    pipeline.set_tags({f"heft.built_by.{step.label.replace(':', '.')}": builder})
