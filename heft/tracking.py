"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

Everything goes through an explicit ``MlflowClient`` and run ids (no "active run"
globals), so stages may log from worker threads or processes.  A stage run carries:
params = its config (the same dataclass that made its cache key), metrics = per-epoch
curves (step = epoch) and final figures, tags = artifact key, location, and whether
the stage was reused from the cache.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heft.config import flat_params
from heft.progress import Progress
from heft.store.artifacts import Artifact

PARENT_TAG = "mlflow.parentRunId"


_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _client(uri: str):
    """One client per store and process, its store opened on creation (a new sqlite file is
    created and migrated here).  Building one costs tens of ms and a pipeline logs through
    dozens of calls; the lock keeps tasks logging from threads from opening the same new
    store twice at once (both would try to create its tables)."""
    with _CLIENTS_LOCK:
        if uri not in _CLIENTS:
            from mlflow import MlflowClient
            if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
            _CLIENTS[uri] = client
        return _CLIENTS[uri]


def open_existing_store(uri: str) -> None:
    """Open a sqlite store now if its file exists (opening it then writes nothing); the CLI
    calls this while Prefect's temporary server boots.  Other stores open on first use, so a
    refused config never creates a database or waits on an unreachable server."""
    if uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).is_file():
        _client(uri)


def experiment_id(uri: str, name: str, artifact_location: str | None = None) -> str:
    """Get or create the experiment.  A new one gets an explicit artifact location next to a
    local sqlite store (otherwise MLflow puts artifacts in ./mlruns of whichever folder
    created the database)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if artifact_location is None and uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        artifact_location = (db.parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


@dataclass(frozen=True)
class Tracker:
    """Serializable handle (uri + ids) that a task can receive and log through."""
    uri: str
    experiment_id: str
    run_id: str = ""

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str, params: dict[str, Any],
              parent: "Tracker | None" = None, tags: dict[str, str] | None = None) -> "Tracker":
        exp = parent.experiment_id if parent else experiment_id(uri, experiment)
        client = _client(uri)
        all_tags = dict(tags or {})
        if parent:
            all_tags[PARENT_TAG] = parent.run_id
        run = client.create_run(exp, run_name=run_name, tags=all_tags)
        tracker = cls(uri, exp, run.info.run_id)
        tracker.log_params(params)
        return tracker

    def child(self, name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> "Tracker":
        return Tracker.start(self.uri, "", name, params, parent=self, tags=tags)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """FINISHED, or FAILED when the block raised (KeyboardInterrupt included)."""
        self.finish("FAILED" if exc_type else "FINISHED")

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        if params:
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            _client(self.uri).log_batch(self.run_id, params=items)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        if items:
            _client(self.uri).log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        client = _client(self.uri)
        for k, v in tags.items():
            client.set_tag(self.run_id, k, str(v))

    def progress(self) -> Progress:
        """Progress callbacks for a training stage: each epoch's metrics with step=epoch."""
        return Progress(on_epoch=lambda epoch, metrics: self.log_metrics(metrics, step=epoch))

    def record_artifact(self, art: Artifact, reused: bool, log_files: bool = True,
                        local_dir: Path | None = None) -> None:
        """Tags, final metrics and (small) files of a finished stage artifact, in as few
        requests as possible: tags and metrics go in one ``log_batch``.  A reused stage
        replays its per-epoch curves (so runs compare alike) but uploads only meta.json:
        its files are at ``heft.uri`` and in the MLflow run that built it; uploading them
        again on every cached run was most of a cached rerun's tracking time."""
        from mlflow.entities import Metric, RunTag
        tags = {"heft.stage": art.stage, "heft.key": art.key, "heft.parent_key": art.parent_key,
                "heft.uri": art.uri, "heft.cached": str(reused).lower()}
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in art.metrics.items() if isinstance(v, (int, float))]
        history = (local_dir / "history.json") if local_dir else None
        if reused and history and history.exists():
            for epoch, values in enumerate(json.loads(history.read_text()), start=1):
                metrics += [Metric(k, float(v), now, epoch) for k, v in values.items()
                            if isinstance(v, (int, float))]
        client = _client(self.uri)
        run_tags = [RunTag(k, str(v)) for k, v in tags.items()]
        client.log_batch(self.run_id, metrics=metrics[:1000], tags=run_tags)
        for i in range(1000, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        if not (log_files and local_dir and local_dir.exists()):
            return
        if reused:
            if (local_dir / "meta.json").exists():
                client.log_artifact(self.run_id, str(local_dir / "meta.json"), artifact_path="heft")
            return
        for path in sorted(local_dir.iterdir()):
            # adapter, intervention, metadata and predictions; not merged model weights
            if path.is_file() and path.stat().st_size < 50 * 2**20:
                client.log_artifact(self.run_id, str(path), artifact_path="heft")
            elif path.is_dir() and path.name == "adapter":
                client.log_artifacts(self.run_id, str(path), artifact_path="heft/adapter")

    def log_files(self, paths: list[Path], artifact_path: str = "") -> None:
        client = _client(self.uri)
        for path in paths:
            client.log_artifact(self.run_id, str(path), artifact_path=artifact_path or None)

    def finish(self, status: str = "FINISHED") -> None:
        _client(self.uri).set_terminated(self.run_id, status=status)


def find_logged_model(run: Tracker, evaluation_key: str) -> str | None:
    """runs:/<id>/model of an earlier run in the experiment that logged the model of this
    evaluation, or None."""
    query = f"tags.`heft.model.key` = '{evaluation_key}' and tags.`heft.model.logged` = 'true'"
    found = _client(run.uri).search_runs([run.experiment_id], query, max_results=1,
                                         order_by=["attributes.start_time DESC"])
    return f"runs:/{found[0].info.run_id}/model" if found else None


def stage_params(stage: str, cfg) -> dict[str, Any]:
    """A stage run's params: its config's fields as '<stage>.<field>'."""
    return flat_params(cfg, prefix=f"{stage}.")
