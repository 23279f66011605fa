"""Flow ``heft``: LoRA -> merge -> LoReFT -> evaluate, each planned step a cached task.

Deployment ``heft/boolq`` points here (prefect.yaml).  Run locally with
``heft run`` (flows/cli.py) or ``python -m flows.heft_flow``.
"""
from __future__ import annotations

from prefect import flow

from flows.runners import tasks_in_order
from heft.config import RunConfig
from heft.plan import Plan, plan, run_title
from heft.progress import say
from heft.presets import DEFAULT_PRESET, load_run_config
from heft.run.execute import execute
from heft.run.result import RunResult, row, summary
from heft.run.validate import Checked, validate
from heft.store.artifacts import ArtifactStore
from heft.tracking import Tracker, experiment_id
from heft.tracking.orphans import close_orphans_note
from tasks.pipeline_run import PipelineRun


def run_name() -> str:
    """Flow-run names from the config: 'HEFT 1+1 · stories260K · seed=0' (or the grid cell's name)."""
    from prefect.runtime import flow_run
    p = flow_run.parameters
    if p.get("run_name"):
        grid = (p.get("mlflow_tags") or {}).get("heft.grid")
        return f"{grid}: {p['run_name']}" if grid else p["run_name"]
    cfg = p.get("config") or (p["planned"].config if p.get("planned") else None)
    if cfg is None:
        return "heft " + (p.get("preset") or DEFAULT_PRESET).rsplit("/", 1)[-1].removesuffix(".yaml") + \
            "".join(f" {o}" for o in p.get("overrides") or [])
    return run_title(cfg)


@flow(name="heft", log_prints=True, flow_run_name=run_name)
def heft(config: RunConfig | None = None, preset: str | None = None, overrides: list[str] | None = None,
         mlflow_parent_run_id: str | None = None, run_name: str | None = None,
         mlflow_tags: dict[str, str] | None = None, planned: Plan | None = None) -> RunResult:
    """Run one HEFT pipeline; returns its ``RunResult`` (held-out results per evaluation, what
    each step did, the MLflow run and model).

    ``config`` is the typed run configuration; deployments may instead name a ``preset``
    YAML from deployments/ plus dotted ``overrides`` (the same as the CLI).  A grid passes
    its MLflow run id as ``mlflow_parent_run_id`` so this run nests under it, and the plan
    of a cell it has already validated as ``planned``."""
    built = None
    if planned is None:
        planned = plan(config or load_run_config(preset or DEFAULT_PRESET, overrides or []))
        checked = validate(planned)  # bad model/layer/rank/data/root fail here, before any training
        describe(checked, planned)
        built = {art.key for art in checked.built.values()}
    config = planned.config
    store = ArtifactStore(config.artifact_root)
    grid_run = None
    if not mlflow_parent_run_id and (note := close_orphans_note(config.tracking_uri, config.experiment)):
        say(note)
    if mlflow_parent_run_id:
        grid_run = Tracker(config.tracking_uri, experiment_id(config.tracking_uri, config.experiment),
                           mlflow_parent_run_id)
    name = run_name or run_title(config)
    with PipelineRun.start(planned, store, grid_run, name, mlflow_tags or {}) as pipeline:
        done = execute(list(planned.steps), store, tasks_in_order(store, pipeline.run), built)
        artifacts = {step.name: done[step.key].artifact for step in planned.steps}
        result = pipeline.finish(artifacts, [row(done[step.key]) for step in planned.steps])
    print(summary(planned, artifacts))  # the run's log; the command prints its own table
    return result


def describe(checked: Checked, planned: Plan) -> None:
    cfg = planned.config
    if checked.all_built:
        say(f"{run_title(cfg)}: all {checked.steps} steps are built already")
    else:
        m = checked.model
        say(f"{run_title(cfg)}: validated {cfg.model.name} ({m['family']}, {m['depth']} blocks), "
            f"{len(planned.steps) - len(checked.built)} of {len(planned.steps)} steps to build")


if __name__ == "__main__":
    heft()
