"""Flow ``heft``: LoRA -> merge -> LoReFT -> evaluate, each stage a cached task.

Deployment ``heft/boolq`` points here (prefect.yaml).  Run locally with
``heft run`` (flows/cli.py) or ``python -m flows.heft_flow``.
"""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from heft.artifacts import ArtifactStore
from heft.config import RunConfig, flat_params
from heft.presets import DEFAULT_PRESET, load_run_config
from heft.pipeline import FINAL_EVAL, key_of, run_pipeline, summary, trained_epochs
from heft.validate import validate
from heft.tracking import Tracker, experiment_id, stage_params
from tasks.stages import STAGE_TASKS


@flow(name="heft", log_prints=True)
def heft(config: RunConfig | None = None, preset: str | None = None, overrides: list[str] | None = None,
         mlflow_parent_run_id: str | None = None, run_name: str | None = None,
         mlflow_tags: dict[str, str] | None = None) -> dict:
    """Run one HEFT pipeline; returns {"results": {evaluation: metrics}, "stages": [...], ...}.

    ``config`` is the typed run configuration; deployments may instead name a ``preset``
    YAML from deployments/ plus dotted ``overrides`` (the same as the CLI).  A grid passes
    its MLflow run id as ``mlflow_parent_run_id`` so this run nests under it."""
    if config is None:
        config = load_run_config(preset or DEFAULT_PRESET, overrides or [])
    info = validate(config)  # bad model/layer/rank/data/root fail here, before any training
    if "cached" in info:
        print(f"validated: all {info['cached']} artifacts of this {config.mode} run are already built")
    else:
        print(f"validated: {config.model.name} ({info['family']}, {info['depth']} blocks), mode={config.mode}")
    store = ArtifactStore(config.artifact_root)
    grid_run = None
    if mlflow_parent_run_id:
        grid_run = Tracker(config.tracking_uri, experiment_id(config.tracking_uri, config.experiment),
                           mlflow_parent_run_id)
    parent_run = Tracker.start(config.tracking_uri, config.experiment, run_name=run_name or config.mode,
                               params=flat_params(config), parent=grid_run,
                               tags={"heft.mode": config.mode, **(mlflow_tags or {})})
    stages_report = []

    def call(stage, cfg, parent):
        key = key_of(stage, cfg, parent)
        reused = stage == "base" or store.find(stage, key) is not None  # base: nothing to build
        child = parent_run.child(stage if stage != "evaluate" else f"evaluate:{parent.stage}",
                                 stage_params(stage, cfg))
        # refresh_cache when the artifact is gone: a stale Prefect record must not stand in for it
        state = STAGE_TASKS[stage].with_options(refresh_cache=not reused)(
            cfg, parent, config.artifact_root, child, return_state=True)
        try:
            art = state.result()
        except BaseException:
            child.finish("FAILED")
            raise
        child.record_artifact(art, reused, local_dir=store.local_path(art) if art.uri else None)
        child.finish()
        stages_report.append((stage, key, state.name, "reused" if reused else "ran"))
        print(f"{stage:>8} {key} {state.name} ({'reused' if reused else 'ran'})")
        return art

    try:
        out = run_pipeline(config, call)
    except BaseException:
        parent_run.finish("FAILED")
        raise
    results = {name[5:]: art.metrics for name, art in out.items() if name.startswith("eval:")}
    for name, metrics in results.items():
        parent_run.log_metrics({f"{name}_accuracy": metrics["accuracy"],
                                f"{name}_ci95_low": metrics["ci95_low"],
                                f"{name}_ci95_high": metrics["ci95_high"]})
    final = results[FINAL_EVAL[config.mode]]  # the same name in every run: MLflow compare lines them up
    parent_run.log_metrics({"accuracy": final["accuracy"], "ci95_low": final["ci95_low"],
                            "ci95_high": final["ci95_high"], "majority_rate": final["majority_rate"],
                            "total_epochs": sum(trained_epochs(config).values())})
    parent_run.finish()
    text = summary(out)
    print(text)
    table = "\n".join(f"| {s} | `{k}` | {st} | {r} |" for s, k, st, r in stages_report)
    create_markdown_artifact(key="heft-summary", description="HEFT accuracies",
                             markdown=f"```\n{text}\n```\n\n| stage | key | state | cache |\n|---|---|---|---|\n{table}")
    return {"results": results, "stages": [dict(zip(("stage", "key", "state", "cache"), r)) for r in stages_report],
            "mlflow_run_id": parent_run.run_id}


if __name__ == "__main__":
    heft()
