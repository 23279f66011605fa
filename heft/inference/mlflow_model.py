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


def task_name(cfg) -> str:
    """The task a model answers, for its registry description: the run config's ``task.name``
    where the config has a task section, else where its data came from ('boolq/validation.jsonl',
    'google/boolq')."""
    named = getattr(getattr(cfg, "task", None), "name", "")
    if named:
        return str(named)
    return "/".join(cfg.data.source.rstrip("/").split("/")[-2:])


def version_description(cfg, title: str, method: str, valid: float | None, valid_rows: int, heldout: dict,
                        constant: str | None = None) -> str:
    """One line: model, task, method, validation, held-out with its interval, majority rate."""
    model = cfg.model.name.rstrip("/").rsplit("/", 1)[-1]
    parts = [model, f"task {task_name(cfg)}", f"{title} ({method})"]
    if valid is not None:
        parts.append(f"validation {valid:.2%}" + (f" of {valid_rows} rows" if valid_rows else ""))
    m = heldout
    parts += [f"held-out {m['accuracy']:.2%} (95% CI {m['ci95_low']:.2%}-{m['ci95_high']:.2%}, n={m['n']})",
              f"majority rate {m['majority_rate']:.2%}"]
    if constant:
        parts.append(f"constant predictor: always '{constant}'")
    return " · ".join(parts)


def _logged_model(client, model_uri: str) -> tuple[str, str | None]:
    """(source, model id) of a model URI: runs:/<run>/model becomes that run's LoggedModel
    (models:/m-...), where MLflow 3 keeps the files; anything else is taken as it is."""
    if not model_uri.startswith("runs:/"):
        return model_uri, None
    run_id, name = model_uri.removeprefix("runs:/").split("/", 1)
    run = client.get_run(run_id)
    found = client.search_logged_models([run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    if not found:
        return model_uri, None
    return f"models:/{found[0].model_id}", found[0].model_id


def current_champion(client, name: str, alias: str = "champion") -> dict | None:
    """{'version', 'valid', 'data_key'} of the version holding ``alias``, or None.  The
    validation accuracy is its run's ``valid_accuracy`` metric; the data key its tag, else its
    run's (a version registered before heft tagged it: the run's dataset digest)."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - no such alias (or model) yet
        return None
    valid, data_key = None, version.tags.get("heft.data.key", "")
    if version.run_id:
        run = client.get_run(version.run_id)
        valid = run.data.metrics.get("valid_accuracy")
        data_key = data_key or run.data.tags.get("heft.data.key", "")
        if not data_key and run.inputs and run.inputs.dataset_inputs:
            data_key = run.inputs.dataset_inputs[0].dataset.digest
    return {"version": str(version.version), "valid": valid, "data_key": data_key}


def register(name: str, model_uri: str, run_id: str, tracking_uri: str, tags: dict, description: str,
             valid: float, data_key: str) -> dict:
    """A new version of registered model ``name`` holding the model at ``model_uri``, linked to
    run ``run_id`` (the grid cell it was chosen as), with ``description`` and ``tags``.  It takes
    the alias 'champion' only when it beats the current champion on the same data
    (heft/grids/verdict.py ``challenge``), else 'challenger'.  Returns {'version', 'alias',
    'why', 'previous'}."""
    import mlflow
    from mlflow import MlflowClient

    from heft.grids.verdict import challenge
    mlflow.set_tracking_uri(tracking_uri)  # the registry's store looks a models:/ source up there
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST
        client.create_registered_model(name, description="HEFT models registered by heft grids; alias "
                                                          "champion: the best by validation accuracy")
    previous = current_champion(client, name)
    alias, why = challenge(valid, data_key, previous)
    source, model_id = _logged_model(client, model_uri)
    version = client.create_model_version(name, source, run_id=run_id, description=description,
                                          tags={**{k: str(v)[:5000] for k, v in tags.items()},
                                                "heft.alias_given": alias, "heft.alias_why": why},
                                          model_id=model_id)
    client.set_registered_model_alias(name, alias, version.version)
    return {"version": str(version.version), "alias": alias, "why": why,
            "previous": previous["version"] if previous else None}
