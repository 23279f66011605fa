"""``heft.load(ref)``: a trained model from any place heft or MLflow keeps it.

``ref`` may be
  * an evaluation (or model) artifact key, looked up under ``root`` ($HEFT_ARTIFACT_ROOT,
    default .heft/artifacts);
  * an artifact folder or URI (``<root>/<stage>/<key>``, local or ``s3://``);
  * a folder written by ``heft export`` (it holds heft.json), local or a URL;
  * an MLflow run id of a pipeline run, or ``runs:/<id>/model`` / ``models:/<name>@<alias>``
    (the MLflow model heft logged: an exported folder, or a reference into the store).
A model artifact (reft, merge, lora, base) is served only once it has been evaluated: the
evaluation is what says which model the run produced and how well it did.  Every failure
is a ``ReferenceError_`` naming the reference, raised before any weights are loaded.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from heft.config import ConfigError
from heft.data.sources import BOOLQ
from heft.data.task import Task
from heft.inference.model import HeftModel
from heft.store.artifacts import META, Artifact, ArtifactStore
from heft.store.fs import url_to_fs

KEY = re.compile(r"^[0-9a-f]{20}$")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MODEL_STAGES = ("reft", "merge", "lora", "base")
EXPORT_FILE = "heft.json"
REFERENCE_FILE = "reference.json"
log = logging.getLogger(__name__)


class ModelReferenceError(ConfigError):
    """A model reference that names nothing loadable; the message says why."""


def load(ref: str, root: str | None = None, tracking_uri: str | None = None) -> HeftModel:
    """The model ``ref`` names (see the module docstring), ready for ``predict``."""
    return open_resolved(resolve(ref, root, tracking_uri))


def prompt_format(resolved: tuple) -> str:
    """The prompt format of a resolved model ('passage' or 'question'), read without loading it."""
    kind, where = resolved
    if kind == "export":
        from heft.inference.export import read_spec
        return read_spec(Path(where))["prompt_format"]
    return where[1].meta["lineage"]["format"]


def task_of(resolved: tuple) -> Task:
    """The task a resolved model answers (BoolQ for models made before tasks), read without
    loading it: what ``heft predict`` must ask for."""
    kind, where = resolved
    if kind == "export":
        from heft.inference.export import read_spec
        spec = read_spec(Path(where)).get("task")
    else:
        spec = where[1].meta["lineage"].get("task")
    return Task(**spec) if spec else BOOLQ


def open_resolved(resolved: tuple) -> HeftModel:
    """Load what ``resolve`` found (weights are read only here)."""
    kind, where = resolved
    if kind == "export":
        from heft.inference.export import load_export
        return load_export(Path(where))
    store, evaluation = where
    return from_store(store, evaluation)


def resolve(ref: str, root: str | None = None, tracking_uri: str | None = None):
    """('export', folder) or ('store', (store, evaluation artifact)); nothing is loaded."""
    ref = str(ref).strip()
    if not ref:
        raise ModelReferenceError("model reference is empty")
    if ref.startswith(("models:/", "runs:/")):
        return resolve(mlflow_model_folder(ref, tracking_uri), root, tracking_uri)
    if "://" in ref:
        return resolve_url(ref)
    if os.path.exists(ref):
        return resolve_folder(Path(ref))
    if KEY.match(ref):
        store = ArtifactStore(root or os.environ.get("HEFT_ARTIFACT_ROOT", ".heft/artifacts"))
        return "store", (store, evaluation_of(store, find_key(store, ref), ref))
    if RUN_ID.match(ref):
        return resolve(run_model_uri(ref, tracking_uri), root, tracking_uri)
    raise ModelReferenceError(f"model reference {ref!r}: not an artifact key (20 hex digits), an MLflow "
                              "run id (32 hex digits), a models:/ or runs:/ URI, a folder or a URL")


def resolve_folder(folder: Path):
    if (folder / EXPORT_FILE).is_file():
        return "export", str(folder)
    if (folder / REFERENCE_FILE).is_file():  # an MLflow model that points into the store
        ref = json.loads((folder / REFERENCE_FILE).read_text())
        store = ArtifactStore(ref["root"])
        return "store", (store, evaluation_of(store, find_key(store, ref["key"]), ref["key"]))
    if (folder / "model" / "artifacts").is_dir():  # a downloaded MLflow model folder
        return resolve_folder(folder / "model" / "artifacts" / "heft")
    if (folder / "artifacts" / "heft").is_dir():
        return resolve_folder(folder / "artifacts" / "heft")
    stage, key = folder.parent.name, folder.name
    store = ArtifactStore(str(folder.parent.parent))
    if not (folder / META).is_file():
        what = "an unfinished artifact (no meta.json yet)" if KEY.match(key) else "not a heft model folder"
        raise ModelReferenceError(f"model reference {str(folder)!r}: {what}")
    return "store", (store, evaluation_of(store, store.find(stage, key), key))


def resolve_url(url: str):
    fs, path = url_to_fs(url)
    if fs.exists(f"{path.rstrip('/')}/{EXPORT_FILE}"):
        from heft.store.hashing import cache_dir
        from heft.inference.export import DamagedExport, check_export
        local = cache_dir() / "exports" / re.sub(r"[^A-Za-z0-9._-]+", "_", url)
        if (local / EXPORT_FILE).exists():
            try:
                check_export(local)
            except DamagedExport as e:  # the local copy may be bad while the remote one is good
                log.warning("%s; downloading it again from %s", e, url)
                shutil.rmtree(local, ignore_errors=True)
        if not (local / EXPORT_FILE).exists():
            fs.get(path.rstrip("/") + "/", str(local), recursive=True)
        return "export", str(local)
    *head, stage, key = url.rstrip("/").split("/")
    store = ArtifactStore("/".join(head))
    found = store.find(stage, key)
    if found is None:
        raise ModelReferenceError(f"model reference {url!r}: no finished artifact there")
    return "store", (store, evaluation_of(store, found, key))


def find_key(store: ArtifactStore, key: str) -> Artifact:
    for stage in ("evaluate",) + MODEL_STAGES:
        if (found := store.find(stage, key)) is not None:
            return found
        if store.fs.exists(f"{store.base}/{stage}/{key}"):
            raise ModelReferenceError(f"model reference {key!r}: the {stage} artifact is unfinished "
                                      f"(no meta.json under {store.root})")
    raise ModelReferenceError(f"model reference {key!r}: no artifact with this key under {store.root}")


def evaluation_of(store: ArtifactStore, art: Artifact | None, ref: str) -> Artifact:
    """The evaluation artifact of ``art`` (itself, if it is one)."""
    if art is None:
        raise ModelReferenceError(f"model reference {ref!r}: no finished artifact with this key")
    if art.stage == "evaluate":
        return art
    if art.stage not in MODEL_STAGES:
        raise ModelReferenceError(f"model reference {ref!r}: a {art.stage} artifact is not a model")
    for meta_path in sorted(store.fs.glob(f"{store.base}/evaluate/*/{META}")):
        meta = json.loads(store.fs.cat_file(meta_path))
        if meta.get("parent") == art.key:
            return store.find("evaluate", meta["key"])
    raise ModelReferenceError(f"model reference {ref!r}: the {art.stage} model {art.key} has not been "
                              "evaluated (run the pipeline to its evaluation first)")


def model_artifact(store: ArtifactStore, evaluation: Artifact) -> Artifact:
    ref = evaluation.meta["lineage"].get("evaluated") or ""
    stage, _, key = ref.removeprefix("artifact:").partition("/")
    found = store.find(stage, key) if stage else None
    if found is None:
        for stage in MODEL_STAGES:  # evaluations written before 'evaluated' was recorded
            if (found := store.find(stage, evaluation.parent_key)) is not None:
                break
    if found is None:
        raise ModelReferenceError(f"evaluation {evaluation.key}: its model {evaluation.parent_key} is "
                                  f"missing under {store.root}")
    return found


def from_store(store: ArtifactStore, evaluation: Artifact) -> HeftModel:
    """Assemble the evaluated model exactly as the evaluation stage did."""
    from heft.stages.evaluate import load_for_eval
    from heft.stages.inputs import StageInputs
    art = model_artifact(store, evaluation)
    inputs = StageInputs.of(art, store)
    tok = inputs.tokenizer()
    model, intervention = load_for_eval(inputs)
    lineage = art.meta["lineage"]
    card = {"evaluation": evaluation.key, "model": {"stage": art.stage, "key": art.key},
            "root": store.root, "metrics": evaluation.metrics, "model_config": lineage["model_config"],
            "data_key": lineage.get("data_key"), "format": lineage["format"]}
    return HeftModel(model=model, tokenizer=tok, family=inputs.family, pooling=inputs.model_cfg.pooling,
                     format=lineage["format"], max_length=inputs.model_cfg.max_length,
                     intervention=intervention, answer_ids=inputs.answer_ids(tok),
                     precision=inputs.precision, card=card, task=inputs.task)


def mlflow_model_folder(uri: str, tracking_uri: str | None) -> str:
    """Download an MLflow model heft logged; its ``heft`` artifact is what ``load`` reads."""
    import mlflow
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri.rstrip("/") + "/artifacts/heft")
    except Exception as e:  # noqa: BLE001 - MlflowException, missing run/alias/model
        raise ModelReferenceError(f"model reference {uri!r}: MLflow cannot give it ({e})") from None
    return local


def run_model_uri(run_id: str, tracking_uri: str | None) -> str:
    from mlflow import MlflowClient
    try:
        run = MlflowClient(tracking_uri).get_run(run_id)
    except Exception as e:  # noqa: BLE001
        raise ModelReferenceError(f"model reference {run_id!r}: no such MLflow run ({e})") from None
    tags = run.data.tags
    if tags.get("heft.model.key") and tags.get("heft.model.root"):  # a normalised root: a path or a URL
        return f"{tags['heft.model.root']}/evaluate/{tags['heft.model.key']}"
    raise ModelReferenceError(f"model reference {run_id!r}: MLflow run {run_id} is not a finished heft "
                              "pipeline run (no heft.model.key tag)")
