"""The trained model out of heft: load it (load.py; ``heft.load``), ask it (model.py),
export it (export.py, card.py), log and register it in MLflow, serve it (mlflow_model.py)."""
