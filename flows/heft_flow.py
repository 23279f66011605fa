"""Flow ``heft``: LoRA -> merge -> LoReFT -> evaluate, each planned step a cached task.

Deployment ``heft/boolq`` points here (prefect.yaml).  Run locally with
``heft run`` (flows/cli.py) or ``python -m flows.heft_flow``.
"""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from heft.config import RunConfig
from heft.pipeline import REBUILDS, built, summary
from heft.store.damage import DamagedArtifact
from heft.plan import Plan, plan
from heft.presets import DEFAULT_PRESET, load_run_config
from heft.store.artifacts import ArtifactStore
from heft.tracking import Tracker, experiment_id
from heft.tracking.client import ui_url
from heft.validate import Checked, validate
from tasks.pipeline_run import PipelineRun
from tasks.stages import StepResult, run_step_task


def run_name() -> str:
    """Flow-run names from the config: 'heft heft stories260K seed=0' (or the grid cell's name)."""
    from prefect.runtime import flow_run
    p = flow_run.parameters
    if p.get("run_name"):
        grid = (p.get("mlflow_tags") or {}).get("heft.grid")
        return f"{grid}: {p['run_name']}" if grid else p["run_name"]
    cfg = p.get("config") or (p["planned"].config if p.get("planned") else None)
    if cfg is None:
        return "heft " + (p.get("preset") or DEFAULT_PRESET).rsplit("/", 1)[-1].removesuffix(".yaml") + \
            "".join(f" {o}" for o in p.get("overrides") or [])
    return f"heft {cfg.mode} {cfg.model.name.rstrip('/').rsplit('/', 1)[-1]} seed={cfg.lora.seed}"


@flow(name="heft", log_prints=True, flow_run_name=run_name)
def heft(config: RunConfig | None = None, preset: str | None = None, overrides: list[str] | None = None,
         mlflow_parent_run_id: str | None = None, run_name: str | None = None,
         mlflow_tags: dict[str, str] | None = None, planned: Plan | None = None) -> dict:
    """Run one HEFT pipeline; returns {"results": {evaluation: metrics}, "stages": [...], ...}.

    ``config`` is the typed run configuration; deployments may instead name a ``preset``
    YAML from deployments/ plus dotted ``overrides`` (the same as the CLI).  A grid passes
    its MLflow run id as ``mlflow_parent_run_id`` so this run nests under it, and the plan
    of a cell it has already validated as ``planned``."""
    checked = None
    if planned is None:
        if config is None:
            config = load_run_config(preset or DEFAULT_PRESET, overrides or [])
        planned = plan(config)
        checked = validate(planned)  # bad model/layer/rank/data/root fail here, before any training
        describe(checked, planned)
    config = planned.config
    store = ArtifactStore(config.artifact_root)
    if not checked:  # validated by the caller: only look up what is built
        checked = Checked(built=built(planned, store), steps=len(planned.steps))
    grid_run = None
    if mlflow_parent_run_id:
        grid_run = Tracker(config.tracking_uri, experiment_id(config.tracking_uri, config.experiment),
                           mlflow_parent_run_id)
    with PipelineRun.start(planned, store, grid_run, run_name or config.mode, mlflow_tags or {}) as pipeline:
        for attempt in range(REBUILDS + 1):
            try:
                done = run_steps(planned, store, pipeline.run, checked)
                break
            except DamagedArtifact as e:  # set aside: the next walk of the plan rebuilds it
                if attempt == REBUILDS:
                    raise
                print(f"{e}: running the plan again")
                checked = Checked(built=built(planned, store), steps=len(planned.steps))
        out = {step.name: done[step.key].artifact for step in planned.steps}
        finished = pipeline.finish_with(out)
    rows = [done[step.key].row() for step in planned.steps]
    text = summary(out)
    print(text)
    publish_summary(planned, rows, text, pipeline.run, finished["model"])
    return {"results": finished["results"], "stages": rows, "mlflow_run_id": pipeline.run.run_id,
            "model": finished["model"], "validation_accuracy": finished["validation_accuracy"]}


def run_steps(planned: Plan, store: ArtifactStore, run: Tracker, checked: Checked) -> dict[str, StepResult]:
    done: dict[str, StepResult] = {}
    for step in planned.steps:
        parent = done[step.parent_key].artifact if step.parent_key else None
        reused = step.name in checked.built
        done[step.key] = result = run_step_task(step, parent, store, run, reused)
        print(f"{step.stage:>8} {step.key} {result.state} ({'reused' if reused else 'ran'})")
    return done


def publish_summary(planned: Plan, rows: list[dict], text: str, run: Tracker, model: dict) -> None:
    """Prefect artifacts of this configuration: the summary (one key per final evaluation, so
    runs of different configs do not collapse into one card) and links to MLflow."""
    key = planned.final.key[:16]
    table = "\n".join(f"| {r['stage']} | `{r['key']}` | {r['state']} | {r['cache']} |" for r in rows)
    markdown = f"```\n{text}\n```\n\n| stage | key | state | cache |\n|---|---|---|---|\n{table}"
    create_markdown_artifact(key=f"heft-summary-{key}", description="HEFT held-out accuracies",
                             markdown=markdown)
    create_link_artifact(ui_url(run.uri, run.experiment_id, run.run_id), link_text="MLflow run",
                         key=f"mlflow-run-{key}", description="the pipeline's MLflow run")
    create_link_artifact(ui_url(run.uri, run.experiment_id, model["uri"].split("/")[1]) + "&tab=artifacts",
                         link_text=f"MLflow model {model['uri']}", key=f"mlflow-model-{key}",
                         description=f"heft predict --model {model['key']}")


def describe(checked: Checked, planned: Plan) -> None:
    cfg = planned.config
    if checked.all_built:
        print(f"validated: all {checked.steps} artifacts of this {cfg.mode} run are already built")
    else:
        m = checked.model
        print(f"validated: {cfg.model.name} ({m['family']}, {m['depth']} blocks), mode={cfg.mode}")


if __name__ == "__main__":
    heft()
