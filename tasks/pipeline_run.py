"""The MLflow run of one pipeline (a ``heft`` flow run, or one cell of a grid).

Opened before its steps run and closed after them, from the flow process: params = the run
config (artifact root normalised), tags = code version, mode, model and the Prefect flow run,
the dataset input (digest = the data key), then the results
under the vocabulary's names (heft/tracking/vocabulary.py) and the model: the final
evaluation, tagged, and logged as an MLflow model unless an earlier run logged it.
The flows ``heft`` and ``heft-grid`` both use it, so a cell reads like a run, and both get
the same ``RunResult`` (heft/run/result.py) from ``finish``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prefect.artifacts import create_link_artifact, create_markdown_artifact

from heft.config import flat_params
from heft.plan import Plan, trained_epochs
from heft.run.result import RunResult, StageRow, run_result, summary
from heft.store.artifacts import Artifact, ArtifactStore
from heft.tracking import Tracker, find_logged_model
from heft.tracking.runs import exit_status
from heft.tracking.context import dataset_input, source_tags
from heft.tracking.client import client, soft, ui_url
from heft.tracking.vocabulary import pipeline_metrics
from tasks.models import log_model_task


@dataclass
class PipelineRun:
    run: Tracker
    planned: Plan
    store: ArtifactStore

    @classmethod
    def start(cls, planned: Plan, store: ArtifactStore, parent: Tracker | None, run_name: str,
              tags: dict[str, str]) -> "PipelineRun":
        cfg = planned.config
        params = flat_params(cfg) | {"artifact_root": store.root}  # normalised: a path that travels
        all_tags = {"heft.mode": cfg.mode, "heft.model": cfg.model.name, **source_tags(),
                    **flow_run_tags(), **tags}
        run = Tracker.start(cfg.tracking_uri, cfg.experiment, run_name=run_name, params=params, parent=parent,
                            tags=all_tags)
        return cls(run, planned, store)

    def close(self, status: str) -> None:
        self.run.finish(status)

    def __enter__(self) -> "PipelineRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exit_status(exc_type))

    def finish(self, artifacts: dict[str, Artifact], rows: list[StageRow]) -> RunResult:
        """Log results, dataset and model, publish the Prefect summary; the run's ``RunResult``.
        ``artifacts``: {step name: artifact} in plan order; ``rows``: what each step did."""
        cfg, run = self.planned.config, self.run
        result = run_result(self.planned, artifacts, rows, mlflow_run_id=run.run_id,
                            flow_run_id=flow_run_id())
        run.log_metrics(pipeline_metrics(result.results, result.final, result.validation_accuracy,
                                         sum(trained_epochs(cfg).values())))
        data = artifacts["data"]
        counts = {s: int(data.metrics.get(f"n_{s}", 0)) for s in ("train", "valid", "eval")}
        soft(client(run.uri).log_inputs, run.run_id,
             datasets=[dataset_input(data.key, cfg.data.source, cfg.data.eval_source, counts)],
             what="log dataset")
        m = result.metrics
        note = (f"held-out accuracy {m['accuracy']:.2%} (95% CI {m['ci95_low']:.2%}-"
                f"{m['ci95_high']:.2%}), majority rate {m['majority_rate']:.2%}")
        run.set_tags({"mlflow.note.content": note})
        model = model_of_run(run, self.store, artifacts[self.planned.final.name])
        publish_summary(self.planned, rows, summary(self.planned, artifacts), run, model)
        return dataclasses.replace(result, model=model)


def publish_summary(planned: Plan, rows: list[StageRow], text: str, run: Tracker, model: dict) -> None:
    """Prefect artifacts of this configuration: the summary (one key per final evaluation, so
    runs of different configs do not collapse into one card) and links to MLflow."""
    key = planned.final.key[:16]
    table = "\n".join(f"| {r.stage} | `{r.key}` | {r.state} | {r.cache} |" for r in rows)
    markdown = f"```\n{text}\n```\n\n| stage | key | state | cache |\n|---|---|---|---|\n{table}"
    create_markdown_artifact(key=f"heft-summary-{key}", description="HEFT held-out accuracies",
                             markdown=markdown)
    create_link_artifact(ui_url(run.uri, run.experiment_id, run.run_id), link_text="MLflow run",
                         key=f"mlflow-run-{key}", description="the pipeline's MLflow run")
    create_link_artifact(ui_url(run.uri, run.experiment_id, model["uri"].split("/")[1]) + "&tab=artifacts",
                         link_text=f"MLflow model {model['uri']}", key=f"mlflow-model-{key}",
                         description=f"heft predict --model {model['key']}")


def flow_run_id() -> str:
    from prefect.runtime import flow_run
    return str(flow_run.id) if flow_run.id else ""


def flow_run_tags() -> dict[str, str]:
    """The Prefect flow run this MLflow run belongs to (and its UI address when there is one)."""
    from prefect.runtime import flow_run
    tags = {"heft.prefect.flow_run_id": str(flow_run.id)} if flow_run.id else {}
    try:
        from prefect.utilities.urls import url_for
        if flow_run.id and (url := url_for("flow-run", obj_id=flow_run.id)):
            tags["heft.prefect.url"] = url
    except Exception:  # noqa: BLE001 - no UI configured
        pass
    return tags


def model_of_run(run: Tracker, store: ArtifactStore, final: Artifact) -> dict:
    """Tag the run with its model (the final evaluation) and log it as an MLflow model, unless
    a run before this one already logged the same evaluation (then link to that model)."""
    run.set_tags({"heft.model.key": final.key, "heft.model.root": store.root})
    earlier = find_logged_model(run, final.key)
    if earlier:
        run.set_tags({"heft.model.uri": earlier})
        return {"uri": earlier, "key": final.key, "logged": False}
    logged = log_model_task(run, store.root, final, final.meta["lineage"]["format"])
    run.set_tags({"heft.model.uri": logged["uri"], "heft.model.logged": "true",
                  "heft.model.mode": logged["mode"]})
    return {"uri": logged["uri"], "key": final.key, "logged": True}
