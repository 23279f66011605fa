"""The trained model as an MLflow model (pyfunc), logged to a pipeline run and registered.

``mlflow.pyfunc.load_model("runs:/<run>/model").predict(df)`` answers a DataFrame of the task's
fields (BoolQ: ``question``, and ``passage`` for passage-format models) with the columns of
``HeftModel.predict`` (BoolQ: ``label``, ``probability``, ``score_false``, ``score_true``; a
choice task: ``choice``, ``answer``, ``choice_norm``, ``scores``; a generate task:
``generation``, ``answer``).

Copy or reference?  The pyfunc model's ``heft`` artifact is either a whole ``heft export``
folder (weights copied into MLflow's artifact store: the model loads anywhere MLflow can be
read), or ``reference.json`` naming the artifact root and the evaluation key (nothing copied:
loading needs read access to the artifact store, e.g. the same s3:// bucket and credentials).
Models whose weights exceed ``HEFT_MLFLOW_COPY_MAX_MB`` (default 1024) are referenced: a
Llama-2-7B merge is 13 GB, and copying it into MLflow for every evaluated pipeline would
double the storage and add minutes of upload per run, while the store already keeps it
content-addressed (docs/benchmarks.md has the measured cost for the small models).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from heft.store.artifacts import Artifact, ArtifactStore

COPY_MAX_MB = float(os.environ.get("HEFT_MLFLOW_COPY_MAX_MB", "1024"))
EXAMPLE = {"question": "is the river longer than the road",
           "passage": "The river runs for 200 kilometres, the road for 120."}


def _python_model():
    import mlflow.pyfunc

    class HeftPythonModel(mlflow.pyfunc.PythonModel):
        """heft.load of the bundled export (or of the referenced store artifact), then predict."""

        def load_context(self, context):
            from heft.inference.load import load
            self.model = load(context.artifacts["heft"])

        def predict(self, context, model_input, params=None):
            import pandas as pd
            rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
            rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]
            return pd.DataFrame(self.model.predict(rows))
    return HeftPythonModel()


# a row and an answer of each built-in task (the MLflow model's input example and signature)
EXAMPLES = {
    "gsm8k": ({"question": "Janet has 16 eggs. She eats 3 and bakes with 4. How many are left?"},
              {"generation": "16 - 3 - 4 = 9\n#### 9", "answer": "9"}),
    "mawps": ({"question": "Donna weighs 69 pounds. Willie weighs 51 pounds. How much heavier is Donna "
                           "than Willie?"}, {"generation": "18", "answer": "18"}),
    "arc-easy": ({"question": "Which technology was developed most recently?",
                  "choices": ["cellular telephone", "television", "refrigerator", "airplane"]},
                 {"choice": 0, "answer": "cellular telephone", "choice_norm": 0,
                  "scores": [-1.0, -2.0, -2.5, -3.0]}),
}


def example_of(task: dict | None, fmt: str) -> tuple[dict, dict]:
    """(input row, output) examples for the task's kind and fields (BoolQ when ``task`` is None)."""
    label = {"label": True, "probability": 0.5, "score_false": 0.0, "score_true": 0.0}
    if not task or (task["kind"] == "label" and not task["template"]):
        return (EXAMPLE if fmt == "passage" else {"question": EXAMPLE["question"]}), label
    if task["name"] in EXAMPLES:
        return EXAMPLES[task["name"]]
    from heft.data.task import template_fields
    row = {f: "..." for f in template_fields(task["template"])}
    if task["kind"] == "choice":
        return ({**row, task["choices"]: ["...", "..."]},
                {"choice": 0, "answer": "...", "choice_norm": 0, "scores": [-1.0, -2.0]})
    return row, label if task["kind"] == "label" else {"generation": "...", "answer": "..."}


def weights_mb(store: ArtifactStore, evaluation: Artifact) -> float:
    """Size of the files the model is loaded from (the merged or de-quantized weights)."""
    from heft.inference.load import model_artifact
    ref = model_artifact(store, evaluation).meta["lineage"].get("weights", "")
    if not ref.startswith("artifact:"):
        return 0.0  # weights from the hub or a folder outside the store: copied on export
    stage, key, *_ = ref.removeprefix("artifact:").split("/")
    art = store.find(stage, key)
    return sum(f["size"] for f in art.meta["files"].values()) / 2**20 if art else 0.0


def log_model(run_id: str, tracking_uri: str, experiment_id: str, store: ArtifactStore,
              evaluation: Artifact, fmt: str) -> dict:
    """Log the evaluated model to MLflow run ``run_id`` as ``model``; returns its URI and mode."""
    import mlflow
    import pandas as pd
    from mlflow.models import Model, infer_signature
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)  # else the model lands in experiment 0
    row, answer = example_of(evaluation.meta["lineage"].get("task"), fmt)
    example, output = pd.DataFrame([row]), pd.DataFrame([answer])
    size = weights_mb(store, evaluation)
    mode = "copy" if size <= COPY_MAX_MB else "reference"
    with tempfile.TemporaryDirectory(prefix="heft-mlflow-") as tmp:
        folder = Path(tmp) / "heft"
        if mode == "copy":
            from heft.inference.export import export
            from heft.inference.load import from_store
            export(from_store(store, evaluation), str(folder), pyreft_layout=False)
        else:
            folder.mkdir()
            (folder / "reference.json").write_text(json.dumps({"root": store.root, "key": evaluation.key}))
        info = Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run_id,
                         python_model=_python_model(), artifacts={"heft": str(folder)},
                         signature=infer_signature(example, output), input_example=example,
                         pip_requirements=requirements())
    return {"uri": f"runs:/{run_id}/model", "model_id": getattr(info, "model_id", None), "mode": mode,
            "weights_mb": size}


def requirements() -> list[str]:
    import importlib.metadata as md
    out = []
    for pkg in ("heft", "torch", "transformers", "peft", "mlflow", "safetensors"):
        try:
            out.append(f"{pkg}=={md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return out


def register(name: str, run_id: str, tracking_uri: str, tags: dict, alias: str = "champion") -> str:
    """A new version of registered model ``name`` from the run's logged model, under ``alias``."""
    import mlflow
    from mlflow import MlflowClient
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST
        client.create_registered_model(name, description="HEFT models registered by heft grids")
    # register_model turns runs:/<id>/model into the run's LoggedModel (models:/m-...), which is
    # where MLflow 3 keeps the files; a version with a runs:/ source cannot be served
    version = mlflow.register_model(f"runs:/{run_id}/model", name,
                                    tags={k: str(v)[:5000] for k, v in tags.items()})
    client.set_registered_model_alias(name, alias, version.version)
    return version.version
