"""MLflow clients and experiments, and logging that survives a busy store.

One ``MlflowClient`` per store and process.  A new experiment gets an explicit artifact
location beside a local sqlite store (otherwise MLflow puts artifacts in ./mlruns of whichever
folder created the database) and is marked for model training: the ``mlflow.experimentKind``
tag, the default chart metric, and a saved run-list view whose columns are the held-out and
validation accuracies (heft/tracking/views.py; MLflow's OSS UI opens in its GenAI view by
default, every link heft prints carries ``workflowType=machine_learning``).

``call`` retries MLflow requests (a locked sqlite file, a restarting server) with backoff;
``soft`` does the same and then warns instead of raising, for the per-step and per-epoch
logging of a training stage, which must never lose the epoch in flight to a tracking blip.
Creating a new sqlite store is serialised across processes with a file lock, so two runs
started at once on a brand-new store do not both run MLflow's schema migration.
"""
from __future__ import annotations

import fcntl
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from heft.tracking import views

log = logging.getLogger(__name__)
_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()
ATTEMPTS, BACKOFF = 4, (0.5, 2.0, 5.0)
_VIEWED: set[tuple[str, str]] = set()  # experiments whose saved view this process has checked


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def client(uri: str):
    """The process's client of store ``uri``, its store opened (a new sqlite file is created
    and migrated here, one process at a time)."""
    with _LOCK:
        if uri not in _CLIENTS:
            from mlflow import MlflowClient
            db = sqlite_path(uri)
            if db is not None:
                db.parent.mkdir(parents=True, exist_ok=True)
                with open(db.parent / f".{db.name}.create.lock", "a+") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # serialise MLflow's migration of a new file
                    c = MlflowClient(tracking_uri=uri)
                    c.search_experiments(max_results=1)
            else:
                c = MlflowClient(tracking_uri=uri)
            _CLIENTS[uri] = c
        return _CLIENTS[uri]


def call(fn: Callable, *args, what: str = "MLflow call", **kwargs):
    """``fn(*args)``, retried with backoff on transient errors; the last error is raised."""
    for attempt in range(ATTEMPTS):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - MlflowException, OperationalError, connection errors
            if (attempt == ATTEMPTS - 1 or "RESOURCE_DOES_NOT_EXIST" in str(e)
                    or "INVALID_PARAMETER" in str(e)):
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, type(e).__name__, BACKOFF[attempt])
            time.sleep(BACKOFF[attempt])


def soft(fn: Callable, *args, what: str = "MLflow logging", **kwargs) -> None:
    """``call``, but a failure after the retries is a warning, not an error."""
    try:
        call(fn, *args, what=what, **kwargs)
    except Exception as e:  # noqa: BLE001
        log.warning("%s failed after %d attempts (%s: %s); training goes on without it",
                    what, ATTEMPTS, type(e).__name__, e)


def experiment_id(uri: str, name: str, artifact_location: str | None = None) -> str:
    """Get or create the experiment (see the module docstring for what a new one gets); an
    experiment whose saved view is missing or outdated gets the current one."""
    c = client(uri)
    exp = call(c.get_experiment_by_name, name, what="read experiment")
    if exp is None:
        db = sqlite_path(uri)
        if artifact_location is None and db is not None:
            artifact_location = (db.resolve().parent / "mlartifacts").as_uri()
        try:
            exp_id = c.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # noqa: BLE001 - created by a concurrent run in the meantime
            return c.get_experiment_by_name(name).experiment_id
        for key, value in {"mlflow.experimentKind": "custom_model_development",
                           "mlflow.experiment.primaryMetric.name": "heldout_accuracy"}.items():
            c.set_experiment_tag(exp_id, key, value)
        exp = c.get_experiment(exp_id)
    if (uri, exp.experiment_id) not in _VIEWED:
        _VIEWED.add((uri, exp.experiment_id))
        save_view(uri, exp.experiment_id, views.EXPERIMENT_VIEW, "heft: accuracies", views.accuracies_view(),
                  stored=exp.tags.get(views.PREFIX + views.EXPERIMENT_VIEW))
    return exp.experiment_id


def save_view(uri: str, experiment: str, key: str, name: str, state: dict, stored: str | None = None) -> None:
    """Saved view ``key`` of the experiment page (heft/tracking/views.py), written unless
    ``stored`` holds it already.  Soft: a page without its view is no reason to fail a run."""
    if not views.same_view(stored, state):
        soft(client(uri).set_experiment_tag, experiment, views.PREFIX + key, views.envelope(name, state),
             what="save the experiment page's view")


def open_existing_store(uri: str) -> None:
    """Open a sqlite store now if its file exists (opening it then writes nothing); the CLI
    calls this while Prefect's temporary server boots.  Other stores open on first use, so a
    refused config never creates a database or waits on an unreachable server."""
    db = sqlite_path(uri)
    if db is not None and db.is_file():
        client(uri)


def probe(uri: str) -> None:
    """Fail now, with the URI named, if the tracking store cannot be reached (validation)."""
    from heft.config import ConfigError
    db = sqlite_path(uri)
    if db is not None:
        folder = db.resolve().parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise ConfigError(f"tracking_uri={uri!r}: {folder} is not a folder")
        return
    if uri.startswith(("http://", "https://")):
        import urllib.request
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except OSError as e:
            raise ConfigError(f"tracking_uri={uri!r}: no MLflow server answers ({e})") from None


# MLflow 3.x's UI picks its GenAI or model-training view from this URL parameter (or the
# browser's last choice), not from the experiment's mlflow.experimentKind tag: every address
# heft hands out carries it, so a link opens on runs, metrics and models, not on traces.
TRAINING_VIEW = views.TRAINING_VIEW


def _ui_base(uri: str) -> str:
    """The tracking server's own UI, or for a local store the address ``mlflow ui`` serves by
    default (HEFT_MLFLOW_UI_URL)."""
    import os
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else \
        os.environ.get("HEFT_MLFLOW_UI_URL", "http://127.0.0.1:5000")


def ui_url(uri: str, experiment: str, run_id: str = "") -> str:
    """The MLflow UI page of a run, or of an experiment's runs opened on its accuracies view."""
    if not run_id:
        return views.view_url(_ui_base(uri), experiment, views.EXPERIMENT_VIEW)
    return f"{_ui_base(uri)}/#/experiments/{experiment}/runs/{run_id}?{TRAINING_VIEW}"


def view_url(uri: str, experiment: str, key: str, charts: bool = False) -> str:
    """The runs page of an experiment opened on saved view ``key`` (heft/tracking/views.py)."""
    return views.view_url(_ui_base(uri), experiment, key, charts)


def compare_url(uri: str, experiment: str, run_ids: list[str]) -> str:
    """MLflow's compare page of some runs (a grid's cells): the params that differ, and a
    parallel-coordinates plot of the first metric the runs share (heldout_accuracy for cells)."""
    from urllib.parse import quote
    runs, exps = quote(json.dumps(list(run_ids))), quote(json.dumps([experiment]))
    return f"{_ui_base(uri)}/#/compare-runs?runs={runs}&experiments={exps}&{TRAINING_VIEW}"
