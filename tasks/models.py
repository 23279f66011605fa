"""The trained model in MLflow: logged to the pipeline run that evaluated it, registered by grids."""
from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from heft.store.artifacts import Artifact, ArtifactStore
from heft.tracking import Tracker


@task(name="log-model", task_run_name="log-model", retries=1, retry_delay_seconds=[5])
def log_model_task(run: Tracker, root: str, evaluation: Artifact, fmt: str) -> dict:
    """Log the evaluated model to the pipeline's MLflow run as a pyfunc model named 'model'."""
    from heft.inference.mlflow_model import log_model
    logged = log_model(run.run_id, run.uri, run.experiment_id, ArtifactStore(root), evaluation, fmt)
    get_run_logger().info("MLflow model %s (%s, %.0f MB of weights)", logged["uri"], logged["mode"],
                          logged["weights_mb"])
    return logged


@task(name="register-model", task_run_name="register-model {name}", retries=1, retry_delay_seconds=[5])
def register_task(name: str, model_uri: str, run_id: str, tracking_uri: str, tags: dict, description: str,
                  valid: float, data_key: str) -> dict:
    """Register a grid cell's model as a new version of ``name``: alias 'champion' if it beats
    the champion on the same data, else 'challenger' (heft/inference/mlflow_model.py)."""
    from heft.inference.mlflow_model import register
    return register(name, model_uri, run_id, tracking_uri, tags, description, valid, data_key)
