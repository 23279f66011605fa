"""The MLflow run of one pipeline (a ``heft`` flow run, or one cell of a grid).

Opened before its steps run and closed after them, from the flow process: params = the run
config (artifact root normalised), tags = code version, mode, model and the Prefect flow run,
the dataset input (digest = the data key), then the results
under the vocabulary's names (heft/tracking/vocabulary.py) and the model: the final
evaluation, tagged, and logged as an MLflow model unless an earlier run logged it.
The flows ``heft`` and ``heft-grid`` both use it, so a cell reads like a run.
"""
from __future__ import annotations

from dataclasses import dataclass

from heft.config import flat_params
from heft.plan import FINAL_EVAL, TRAINS, Plan, trained_epochs
from heft.store.artifacts import Artifact, ArtifactStore
from heft.tracking import Tracker, find_logged_model
from heft.tracking.context import dataset_input, source_tags
from heft.tracking.client import client, soft
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
        interrupted = exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, SystemExit))
        self.close("KILLED" if interrupted else "FAILED" if exc_type else "FINISHED")

    def finish_with(self, out: dict[str, Artifact]) -> dict:
        """Log results, dataset and model; returns {'results', 'model', 'validation_accuracy'}."""
        cfg, run = self.planned.config, self.run
        results = {name[5:]: art.metrics for name, art in out.items() if name.startswith("eval:")}
        valid = validation_accuracy(self.planned, out)
        final = FINAL_EVAL[cfg.mode]
        run.log_metrics(pipeline_metrics(results, final, valid, sum(trained_epochs(cfg).values())))
        data = out["data"]
        rows = {s: int(data.metrics.get(f"n_{s}", 0)) for s in ("train", "valid", "eval")}
        soft(client(run.uri).log_inputs, run.run_id,
             datasets=[dataset_input(data.key, cfg.data.source, cfg.data.eval_source, rows)],
             what="log dataset")
        m = results[final]
        note = (f"held-out accuracy {m['accuracy']:.2%} (95% CI {m['ci95_low']:.2%}-"
                f"{m['ci95_high']:.2%}), majority rate {m['majority_rate']:.2%}")
        run.set_tags({"mlflow.note.content": note})
        model = model_of_run(run, self.store, out[self.planned.final.name])
        return {"results": results, "model": model, "validation_accuracy": valid}


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


def validation_accuracy(planned: Plan, out: dict[str, Artifact]) -> float | None:
    """The validation accuracy of the model the run produced: its last training stage's after
    the last epoch (the rows carved out for model selection, never the held-out ones)."""
    trained = TRAINS[planned.config.mode]
    return out[trained[-1]].metrics.get("final_valid_accuracy") if trained else None


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
