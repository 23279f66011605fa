"""The MLflow run of one pipeline (a ``heft`` flow run, or one cell of a grid).

Opened before its steps run and closed after them, from the flow process: params = the run
config (artifact root normalised; the stage sections its mode does not run are logged as '-',
so a ReFT-only cell does not show LoRA settings as if LoRA had trained), tags = code version,
mode, model, data key and the Prefect flow run,
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
from heft.grids.verdict import constant_answer
from heft.modes import MODES
from heft.plan import Plan, trained_epochs
from heft.run.result import RunResult, StageRow, run_result, summary
from heft.store.artifacts import Artifact, ArtifactStore
from heft.tracking import Tracker, find_logged_model
from heft.tracking.runs import exit_status
from heft.tracking.context import dataset_input, source_tags
from heft.tracking.client import client, soft, ui_url
from heft.tracking.vocabulary import pipeline_metrics
from tasks.models import log_model_task
from tasks.stages import slug


UNUSED = "-"  # the value of a param whose stage section the run's mode does not run


def run_params(cfg, root: str) -> dict:
    """The run config as MLflow params: the sections the mode runs as they are, the other stage
    sections (lora.* of a ReFT-only run, reft.* of LoRA-only, merge.* of reft-lora) as '-'."""
    unused = {"lora", "merge", "reft"} - set(MODES[cfg.mode].sections)
    params = flat_params(cfg) | {"artifact_root": root}  # normalised: a path that travels
    return {k: UNUSED if k.split(".", 1)[0] in unused else v for k, v in params.items()}


@dataclass
class PipelineRun:
    run: Tracker
    planned: Plan
    store: ArtifactStore
    name: str = ""
    grid: str = ""
    seconds: float | None = None  # a grid cell's duration: the seconds of the steps it built

    @classmethod
    def start(cls, planned: Plan, store: ArtifactStore, parent: Tracker | None, run_name: str,
              tags: dict[str, str]) -> "PipelineRun":
        cfg = planned.config
        all_tags = {"heft.mode": cfg.mode, "heft.model": cfg.model.name, "heft.data.key": planned["data"].key,
                    **source_tags(), **flow_run_tags(), **tags}
        run = Tracker.start(cfg.tracking_uri, cfg.experiment, run_name=run_name,
                            params=run_params(cfg, store.root), parent=parent, tags=all_tags)
        return cls(run, planned, store, run_name, tags.get("heft.grid", ""))

    def close(self, status: str) -> None:
        """Closed with ``status``; a grid cell's run lasts the seconds of the steps it built, not
        the grid's (a cell found entirely in the store takes ~0 s)."""
        self.run.finish(status, seconds=self.seconds if status == "FINISHED" else None)

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
                                         trained_epochs(cfg)))
        data = artifacts["data"]
        counts = {s: int(data.metrics.get(f"n_{s}", 0)) for s in ("train", "valid", "eval")}
        soft(client(run.uri).log_inputs, run.run_id,
             datasets=[dataset_input(data.key, cfg.data.source, cfg.data.eval_source, counts)],
             what="log dataset")
        m = result.metrics
        answer = constant_answer(m.get("predicted_true_rate"))
        note = (f"held-out accuracy {m['accuracy']:.2%} (95% CI {m['ci95_low']:.2%}-"
                f"{m['ci95_high']:.2%}), majority rate {m['majority_rate']:.2%}"
                + (f"; a constant predictor: it answers '{answer}' on every held-out row" if answer else ""))
        run.set_tags({"mlflow.note.content": note,
                      "heft.answers": f"always {answer} (constant predictor)" if answer else "varied"})
        model = model_of_run(run, self.store, artifacts[self.planned.final.name])
        publish_summary(self, rows, summary(self.planned, artifacts), model, note)
        return dataclasses.replace(result, model=model)


def publish_summary(pipeline: PipelineRun, rows: list[StageRow], text: str, model: dict, note: str) -> None:
    """Prefect artifacts of this configuration, keyed by what it is: the grid and cell
    ('heft-summary-reft-layers-reft-layer-1-seed-0'), or a run's title and its final key (runs
    of different configs must not collapse into one card); the accuracy in the description."""
    run, name = pipeline.run, pipeline.name
    final = pipeline.planned.final.key[:8]
    key = slug(f"{pipeline.grid}-{name}") if pipeline.grid else slug(f"{name}-{final}")
    table = "\n".join(f"| {r.label or r.stage} | `{r.key}` | {r.state} | {r.cache} |" for r in rows)
    markdown = f"```\n{text}\n```\n\n| step | key | state | cache |\n|---|---|---|---|\n{table}"
    where = f"grid {pipeline.grid}, {name}" if pipeline.grid else name
    create_markdown_artifact(key=f"heft-summary-{key}", description=f"{where}: {note}", markdown=markdown)
    create_link_artifact(ui_url(run.uri, run.experiment_id, run.run_id), link_text="MLflow run",
                         key=f"mlflow-run-{key}", description=f"the MLflow run of {where}")
    create_link_artifact(ui_url(run.uri, run.experiment_id, model["uri"].split("/")[1]) + "&tab=artifacts",
                         link_text=f"MLflow model {model['uri']}", key=f"mlflow-model-{key}",
                         description=f"{where}: heft predict --model {model['key']}")


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
