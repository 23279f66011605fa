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
from heft.pipeline import key_of, run_pipeline, summary, validate
from heft.tracking import Tracker, stage_params
from tasks.stages import STAGE_TASKS


@flow(name="heft", log_prints=True)
def heft(config: RunConfig | None = None, preset: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run one HEFT pipeline; returns {evaluation name: metrics}.

    ``config`` is the typed run configuration; deployments may instead name a ``preset``
    YAML from deployments/ plus dotted ``overrides`` (the same as the CLI)."""
    if config is None:
        config = load_run_config(preset or DEFAULT_PRESET, overrides or [])
    info = validate(config)  # bad model/layer/rank/data/root fail here, before any training
    print(f"validated: {config.model.name} ({info['family']}, {info['depth']} blocks), mode={config.mode}")
    store = ArtifactStore(config.artifact_root)
    parent_run = Tracker.start(config.tracking_uri, config.experiment, run_name=config.mode,
                               params=flat_params(config), tags={"heft.mode": config.mode})
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
    parent_run.log_metrics({"majority_rate": next(iter(results.values()))["majority_rate"]})
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
