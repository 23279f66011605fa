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


@task(name="register-model", task_run_name="register-model", retries=1, retry_delay_seconds=[5])
def register_task(name: str, run_id: str, tracking_uri: str, tags: dict) -> str:
    """Register a pipeline run's model as a new version of ``name`` with alias 'champion'."""
    from heft.inference.mlflow_model import register
    version = register(name, run_id, tracking_uri, tags)
    get_run_logger().info("registered %s version %s (alias champion) from run %s", name, version, run_id)
    return version
