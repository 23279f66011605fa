"""MLflow tracking: clients, experiments and retries (client.py), runs (runs.py), the metric
vocabulary (vocabulary.py), and code version, dataset and system metrics (context.py)."""
from heft.tracking.client import experiment_id, open_existing_store, probe
from heft.tracking.runs import Tracker, find_logged_model, stage_params

__all__ = ["Tracker", "experiment_id", "find_logged_model", "open_existing_store", "probe", "stage_params"]
