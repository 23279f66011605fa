"""Flow ``heft``: LoRA -> merge -> LoReFT -> evaluate, each planned step a cached task.

Deployment ``heft/boolq`` points here (prefect.yaml).  Run locally with
``heft run`` (flows/cli.py) or ``python -m flows.heft_flow``.
"""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from heft.config import RunConfig, flat_params
from heft.pipeline import built, summary
from heft.plan import FINAL_EVAL, TRAINS, Plan, plan, trained_epochs
from heft.presets import DEFAULT_PRESET, load_run_config
from heft.store.artifacts import ArtifactStore
from heft.tracking import Tracker, experiment_id, find_logged_model
from heft.validate import Checked, validate
from tasks.models import log_model_task
from tasks.stages import StepResult, run_step_task


@flow(name="heft", log_prints=True)
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
    params = flat_params(config) | {"artifact_root": store.root}  # normalised: a path that travels
    with Tracker.start(config.tracking_uri, config.experiment, run_name=run_name or config.mode,
                       params=params, parent=grid_run,
                       tags={"heft.mode": config.mode, **(mlflow_tags or {})}) as run:
        done: dict[str, StepResult] = {}
        for step in planned.steps:
            parent = done[step.parent_key].artifact if step.parent_key else None
            reused = step.name in checked.built
            done[step.key] = result = run_step_task(step, parent, store, run, reused)
            print(f"{step.stage:>8} {step.key} {result.state} ({'reused' if reused else 'ran'})")
        out = {step.name: done[step.key].artifact for step in planned.steps}
        results = {name[5:]: art.metrics for name, art in out.items() if name.startswith("eval:")}
        for name, metrics in results.items():
            run.log_metrics({f"{name}_accuracy": metrics["accuracy"], f"{name}_ci95_low": metrics["ci95_low"],
                             f"{name}_ci95_high": metrics["ci95_high"]})
        final = results[FINAL_EVAL[config.mode]]  # the same name in every run: MLflow compare lines them up
        run.log_metrics({"accuracy": final["accuracy"], "ci95_low": final["ci95_low"],
                         "ci95_high": final["ci95_high"], "majority_rate": final["majority_rate"],
                         "total_epochs": sum(trained_epochs(config).values())})
        model = model_of_run(run, store, done[planned.final.key])
    rows = [done[step.key].row() for step in planned.steps]
    text = summary(out)
    print(text)
    table = "\n".join(f"| {r['stage']} | `{r['key']}` | {r['state']} | {r['cache']} |" for r in rows)
    markdown = f"```\n{text}\n```\n\n| stage | key | state | cache |\n|---|---|---|---|\n{table}"
    create_markdown_artifact(key="heft-summary", description="HEFT accuracies", markdown=markdown)
    return {"results": results, "stages": rows, "mlflow_run_id": run.run_id, "model": model,
            "validation_accuracy": validation_accuracy(planned, out)}


def validation_accuracy(planned: Plan, out: dict) -> float | None:
    """The validation accuracy of the model the run produced: its last training stage's after
    the last epoch (the rows carved out for model selection, never the held-out ones)."""
    trained = TRAINS[planned.config.mode]
    return out[trained[-1]].metrics.get("final_valid_accuracy") if trained else None


def model_of_run(run: Tracker, store: ArtifactStore, final: StepResult) -> dict:
    """Tag the run with its model (the final evaluation) and log it as an MLflow model, unless
    a run before this one already logged the same evaluation (then link to that model)."""
    art = final.artifact
    run.set_tags({"heft.model.key": art.key, "heft.model.root": store.root})
    earlier = find_logged_model(run, art.key)
    if earlier:
        run.set_tags({"heft.model.uri": earlier})
        return {"uri": earlier, "key": art.key, "logged": False}
    logged = log_model_task(run, store.root, art, art.meta["lineage"]["format"])
    run.set_tags({"heft.model.uri": logged["uri"], "heft.model.logged": "true",
                  "heft.model.mode": logged["mode"]})
    return {"uri": logged["uri"], "key": art.key, "logged": True}


def describe(checked: Checked, planned: Plan) -> None:
    cfg = planned.config
    if checked.all_built:
        print(f"validated: all {checked.steps} artifacts of this {cfg.mode} run are already built")
    else:
        m = checked.model
        print(f"validated: {cfg.model.name} ({m['family']}, {m['depth']} blocks), mode={cfg.mode}")


if __name__ == "__main__":
    heft()
