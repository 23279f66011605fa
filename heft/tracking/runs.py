"""MLflow runs: one per pipeline (or grid cell), one nested run per stage that is *built*.

Everything goes through an explicit ``MlflowClient`` and run ids (no "active run" globals),
so stages may log from worker threads or processes.  A stage run carries: params = its config
(the same dataclass that made its cache key, under the config section's name: ``lora.rank``),
metrics = per-step loss and per-epoch validation on the optimizer-step axis, then its final
figures (heft/tracking/vocabulary.py), tags = artifact key and location.  A stage found in the
store gets no run of its own: the pipeline run links to the run that built it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heft.config import flat_params
from heft.progress import Progress
from heft.store.artifacts import Artifact
from heft.tracking.client import call, client, experiment_id, soft
from heft.tracking.orphans import process_tags
from heft.tracking.vocabulary import epoch_metrics, stage_metrics

PARENT_TAG = "mlflow.parentRunId"
SECTION = {"data": "", "base": "model", "lora": "lora", "merge": "merge", "reft": "reft",
           "evaluate": "eval"}
BATCH = 1000  # MLflow takes at most 1000 metrics per log_batch


def _metrics(values: dict[str, float], step: int):
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]


@dataclass(frozen=True)
class Tracker:
    """Serializable handle (uri + ids) that a task can receive and log through."""
    uri: str
    experiment_id: str
    run_id: str = ""
    started_ms: int = 0  # when the run was created (epoch ms): a run closed with ``seconds`` ends then

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str, params: dict[str, Any],
              parent: "Tracker | None" = None, tags: dict[str, str] | None = None) -> "Tracker":
        exp = parent.experiment_id if parent else experiment_id(uri, experiment)
        all_tags = {**process_tags(), **(tags or {})}  # which process: a run it left RUNNING is closed later
        if parent:
            all_tags[PARENT_TAG] = parent.run_id
        now = int(time.time() * 1000)
        run = call(client(uri).create_run, exp, start_time=now, run_name=run_name, tags=all_tags,
                   what="create run")
        tracker = cls(uri, exp, run.info.run_id, now)
        tracker.log_params(params)
        return tracker

    def child(self, name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> "Tracker":
        return Tracker.start(self.uri, "", name, params, parent=self, tags=tags)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """FINISHED, FAILED when the block raised, KILLED when it was interrupted (KeyboardInterrupt,
        SystemExit, Prefect's TerminationSignal: anything raised that is not an Exception)."""
        self.finish(exit_status(exc_type))

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # at most 100 params per batch
            call(client(self.uri).log_batch, self.run_id, params=items[i:i + 100], what="log params")

    def log_metrics(self, metrics: dict[str, float], step: int = 0, strict: bool = True) -> None:
        items = _metrics(metrics, step)
        if items:
            (call if strict else soft)(client(self.uri).log_batch, self.run_id, metrics=items,
                                       what=f"log metrics of run {self.run_id}")

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag
        if tags:
            call(client(self.uri).log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()],
                 what="set tags")

    def progress(self, every: int = 10) -> Progress:
        """Live curves of a training stage: loss and learning rate every ``every`` optimizer
        steps, validation after every epoch on the same step axis.  Soft: a tracking fault
        warns, training goes on."""
        def on_step(step: int, metrics: dict) -> None:
            self.log_metrics({"train_loss": metrics["train_loss_step"],
                              "learning_rate": metrics["learning_rate"]}, step=step, strict=False)

        def on_epoch(epoch: int, metrics: dict) -> None:
            self.log_metrics(epoch_metrics(metrics) | {"epoch": epoch},
                             step=int(metrics.get("optimizer_steps", epoch)), strict=False)
        return Progress(on_epoch=on_epoch, on_step=on_step, every=every)

    def record_artifact(self, art: Artifact, local_dir: Path | None = None, replay: bool = False) -> None:
        """Tags, final metrics and small files of a stage artifact this run built; with
        ``replay`` also its per-epoch curves from history.json (a worker that could not log
        live)."""
        from mlflow.entities import RunTag
        tags = {"heft.stage": art.stage, "heft.key": art.key, "heft.parent_key": art.parent_key or "",
                "heft.uri": art.uri}
        metrics = _metrics(stage_metrics(art.stage, art.metrics), 0)
        history = (local_dir / "history.json") if local_dir else None
        if replay and history and history.exists():
            for epoch, values in enumerate(json.loads(history.read_text()), start=1):
                metrics += _metrics(epoch_metrics(values) | {"epoch": epoch},
                                    int(values.get("optimizer_steps", epoch)))
        c = client(self.uri)
        call(c.log_batch, self.run_id, metrics=metrics[:BATCH],
             tags=[RunTag(k, str(v)) for k, v in tags.items()], what="record artifact")
        for i in range(BATCH, len(metrics), BATCH):
            call(c.log_batch, self.run_id, metrics=metrics[i:i + BATCH], what="record artifact")
        if not (local_dir and local_dir.exists()):
            return
        for path in sorted(local_dir.iterdir()):
            # adapter, intervention, metadata and predictions; not merged model weights
            if path.is_file() and path.stat().st_size < 50 * 2**20:
                soft(c.log_artifact, self.run_id, str(path), artifact_path="heft", what="upload files")
            elif path.is_dir() and path.name == "adapter":
                soft(c.log_artifacts, self.run_id, str(path), artifact_path="heft/adapter",
                     what="upload files")

    def log_image(self, path: Path, key: str) -> None:
        """A PNG as an MLflow image of this run under ``key`` (an experiment page's image charts
        show it).  Soft: a chart without its picture is no reason to fail a run."""
        from PIL import Image
        with Image.open(path) as image:
            soft(client(self.uri).log_image, self.run_id, image.convert("RGB"), key=key, step=0,
                 what="log image")

    def log_files(self, paths: list[Path], artifact_path: str = "") -> None:
        for path in paths:
            soft(client(self.uri).log_artifact, self.run_id, str(path), artifact_path=artifact_path or None,
                 what="upload files")

    def finish(self, status: str = "FINISHED", seconds: float | None = None) -> None:
        """Close the run; with ``seconds`` it ends that long after it started (MLflow's Duration),
        for a run opened before its work could start (a grid opens every run up front)."""
        end = self.started_ms + int(1000 * seconds) if seconds is not None and self.started_ms else None
        call(client(self.uri).set_terminated, self.run_id, status=status, end_time=end, what="close run")

    def close_if_open(self, status: str) -> bool:
        """Close the run with ``status`` unless it is closed already (a stage that finished keeps
        FINISHED when the grid around it fails); whether it was open."""
        run = call(client(self.uri).get_run, self.run_id, what="read run")
        if run.info.status != "RUNNING":
            return False
        self.finish(status)
        return True


def exit_status(exc_type) -> str:
    """The MLflow status of a run whose block ended with ``exc_type`` (None: it did not raise)."""
    if exc_type is None:
        return "FINISHED"
    return "FAILED" if issubclass(exc_type, Exception) else "KILLED"


def find_logged_model(run: Tracker, evaluation_key: str) -> str | None:
    """runs:/<id>/model of an earlier run in the experiment that logged the model of this
    evaluation, or None."""
    query = f"tags.`heft.model.key` = '{evaluation_key}' and tags.`heft.model.logged` = 'true'"
    found = call(client(run.uri).search_runs, [run.experiment_id], query, max_results=1,
                 order_by=["attributes.start_time DESC"], what="search runs")
    return f"runs:/{found[0].info.run_id}/model" if found else None


def stage_params(stage: str, cfg) -> dict[str, Any]:
    """A stage run's params: its config's fields as '<section>.<field>', the names the
    pipeline run uses for the same fields (task.* and data.*, model.*, lora.*, merge.*, reft.*,
    eval.*; the data stage's config holds the task and data sections itself)."""
    return flat_params(cfg, prefix=f"{SECTION[stage]}." if SECTION[stage] else "")
