"""``heft export``: one self-contained folder that loads with no artifact store and no MLflow.

    <folder>/heft.json                what heft.load needs (family, pooling, prompt format,
                                      max length, answer tokens, intervention) + the keys,
                                      configs and held-out metrics of the run
    <folder>/model/                   save_pretrained weights (LoRA merged; for an encoder the
                                      2-label head the ReFT stage trained) and the tokenizer
    <folder>/intervention/            the LoReFT intervention: heft's files (intervention.json,
                                      intervention.safetensors) and pyreft's layout (config.json
                                      and intkey_<key>.bin, loadable by pyreft.ReftModel.load)
    <folder>/README.md                the model card
A destination URL (``s3://...``) gets the same files, written locally first and uploaded
with heft.json last, so a half-uploaded export is never taken for a model.

Content checks at the exit: heft.json lists every other file's size and sha256 and carries a
digest of its own content, and ``load_export`` checks both before any weights load.  A flipped
bit in the weights changed a served probability from 0.7773 to 0.7663 with no warning (MLflow
and Hugging Face verify nothing on load), so a mismatch is refused with the file named; the
MLflow model's copy of an export is such a folder and is checked the same way.  The sha256 of
a file is trusted while its stamp is unchanged (heft/store/hashing.py), as in the store.

A destination must be empty or absent, locally and on an object store; of two exports into
one empty folder at once, the second to finish is refused (the folder appears by one rename).
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib.metadata
import json
import logging
import shutil
import tempfile
from pathlib import Path

from heft.config import ConfigError
from heft.data.sources import BOOLQ
from heft.data.task import Task
from heft.inference.card import model_card
from heft.inference.model import HeftModel
from heft.store.damage import content_problem
from heft.store.hashing import StampCache, sha256_file
from heft.store.space import named_when_full

FORMAT = 1
SPEC = "heft.json"
log = logging.getLogger(__name__)


class DamagedExport(ConfigError):
    """An exported folder whose files do not match the sha256 in its heft.json."""

    def __init__(self, folder: Path | str, problem: str):
        super().__init__(f"exported model {str(folder)!r}: {problem}; refusing to load it "
                         "(export the model again, or restore the file)")
        self.problem = problem


def export(model: HeftModel, dest: str, pyreft_layout: bool = True) -> str:
    """Write ``model`` to ``dest`` (a folder, or a URL); returns where it went.  Without
    ``pyreft_layout`` the intervention is in heft's files only (MLflow refuses the '#' that
    pyvene puts in its file names, so the MLflow model bundles an export without them)."""
    if "://" in dest and not dest.startswith("file://"):
        from heft.store.fs import url_to_fs
        fs, path = url_to_fs(dest)
        path = path.rstrip("/")
        fs.invalidate_cache(path)
        if fs.find(path):  # as for a local folder: never overwrite what is there
            raise FileExistsError(f"export destination {dest!r} exists and is not empty")
        with tempfile.TemporaryDirectory(prefix="heft-export-") as tmp:
            with named_when_full(tmp, f"exporting to {dest} (written locally first)"):
                write_folder(model, Path(tmp), pyreft_layout)
            for f in sorted(p for p in Path(tmp).rglob("*") if p.is_file() and p.name != SPEC):
                fs.put_file(str(f), f"{path}/{f.relative_to(tmp).as_posix()}")
            try:  # last, create-if-absent: complete, and a concurrent export's heft.json is kept
                fs.pipe_file(f"{path}/{SPEC}", (Path(tmp) / SPEC).read_bytes(), mode="create")
            except FileExistsError:
                raise FileExistsError(f"export destination {dest!r} was written by another export at the "
                                      "same time; its heft.json is kept (a file of ours that replaced one "
                                      "of theirs fails its sha256 check on load)") from None
        return dest
    folder = Path(dest.removeprefix("file://"))
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"export destination {str(folder)!r} exists and is not empty")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".heft-export-", dir=folder.parent))
    try:
        with named_when_full(tmp, f"exporting to {folder}"):
            write_folder(model, tmp, pyreft_layout)
        try:  # atomic: the folder appears complete or not at all (rename replaces an empty folder)
            tmp.rename(folder)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(f"export destination {str(folder)!r} was filled by another export "
                                      "while this one was writing; this one kept nothing") from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def write_folder(model: HeftModel, folder: Path, pyreft_layout: bool = True) -> None:
    weights = model.model
    if hasattr(weights, "merge_and_unload"):  # a LoRA view: fold the adapter in (exact, heft/stages/merge.py)
        weights = weights.merge_and_unload(safe_merge=True)
        model.model = weights
    weights.save_pretrained(str(folder / "model"), safe_serialization=True)
    model.tokenizer.save_pretrained(str(folder / "model"))
    spec = {"format": FORMAT, "heft_version": _version(), "family": model.family, "pooling": model.pooling,
            "prompt_format": model.format, "max_length": model.max_length, "precision": model.precision,
            "answer_ids": list(model.answer_ids) if model.answer_ids else None, "intervention": None,
            "task": dataclasses.asdict(model.task), "card": model.card}
    if model.intervention is not None:
        iv = model.intervention
        (folder / "intervention").mkdir()
        iv.save(folder / "intervention")
        if pyreft_layout:
            write_pyreft_layout(iv, folder / "intervention")
        spec["intervention"] = {"layer": iv.layer, "positions": iv.positions, "component": "block_output",
                                "low_rank_dimension": iv.loreft.rank, "embed_dim": iv.loreft.embed_dim}
    (folder / "README.md").write_text(model_card(spec))
    spec["files"] = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                     for p in sorted(folder.rglob("*")) if p.is_file() and p != folder / SPEC}
    spec["digest"] = spec_digest(spec)
    (folder / SPEC).write_text(json.dumps(spec, indent=2))


def spec_digest(spec: dict) -> str:
    """sha256 of heft.json's content without its digest: an edit that still parses (a max
    length, an answer token, a file's recorded sha256) is caught like a flipped weight."""
    body = {k: v for k, v in spec.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_spec(folder: Path) -> dict:
    """An export's heft.json, refused (DamagedExport) unless it parses and matches its digest."""
    try:
        spec = json.loads((folder / SPEC).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DamagedExport(folder, f"{SPEC} is not valid JSON text ({e})") from None
    if not isinstance(spec, dict):
        raise DamagedExport(folder, f"{SPEC} is not valid: not a JSON object")
    if "digest" in spec and spec_digest(spec) != spec["digest"]:
        raise DamagedExport(folder, f"{SPEC}: its content differs from its digest")
    if "files" in spec and "digest" not in spec:  # an older heft wrote neither
        raise DamagedExport(folder, f"{SPEC} is not valid: it lists files but has no digest")
    return spec


def check_export(folder: Path) -> dict:
    """heft.json, once every file it lists matches its size and sha256 (else DamagedExport)."""
    spec = read_spec(folder)
    if "files" not in spec:  # written before exports carried their sha256
        log.warning("exported model %s lists no sha256 of its files (an older heft wrote it): not checked",
                    folder)
        return spec
    if (problem := content_problem(spec["files"], folder, StampCache(), record=SPEC)) is not None:
        raise DamagedExport(folder, problem)
    return spec


def pyreft_key(layer: int) -> str:
    """pyvene's name of one LoReFT intervention on a block output (its intkey_<key>.bin file)."""
    return f"layer_{layer}_comp_block_output_unit_pos_nunit_1#0"


def write_pyreft_layout(iv, folder: Path) -> None:
    """What ``pyreft.ReftModel.save`` writes for one LoreftIntervention at a block output
    (checked against pyreft 0.1.0's own save): the three tensors under pyreft's names in
    ``intkey_<key>.bin`` (torch.save) and the pyvene config that ``ReftModel.load`` reads."""
    import torch
    import transformers
    state = {k: v.clone() for k, v in iv.loreft.pyreft_state().items() if not k.startswith("parametrization")}
    key = pyreft_key(iv.layer)
    torch.save(state, folder / f"intkey_{key}.bin")
    # RepresentationConfig fields: layer, component, unit, max_number_of_units, low_rank_dimension, ...
    representation = [iv.layer, "block_output", "pos", 1, iv.loreft.rank] + [None] * 9
    config = {"intervention_constant_sources": [True], "intervention_dimensions": [iv.loreft.embed_dim],
              "intervention_types": ["<class 'pyreft.interventions.LoreftIntervention'>"], "mode": "parallel",
              "representations": [representation], "sorted_keys": [key],
              "transformers_version": transformers.__version__}
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def load_export(folder: Path) -> HeftModel:
    """An exported folder back as a HeftModel (no store, no MLflow)."""
    from heft.modeling import models
    from heft.modeling.loreft import Intervention
    spec = check_export(folder)  # before any weights are read
    if spec.get("format") != FORMAT:
        raise ValueError(f"{folder}: export format {spec.get('format')!r}, this heft reads {FORMAT}")
    dtype = spec["card"].get("model_config", {}).get("dtype", "float32")
    model = models.load_model(str(folder / "model"), spec["family"], dtype).to(models.device()).eval()
    tok = models.load_tokenizer(str(folder / "model"), spec["family"])
    iv = None
    if spec["intervention"]:
        iv = Intervention.load(folder / "intervention")
        iv.loreft.to(models.device())
    return HeftModel(model=model, tokenizer=tok, family=spec["family"], pooling=spec["pooling"],
                     format=spec["prompt_format"], max_length=spec["max_length"], intervention=iv,
                     answer_ids=tuple(spec["answer_ids"]) if spec["answer_ids"] else None,
                     precision=spec["precision"], card=spec["card"],
                     task=Task(**spec["task"]) if spec.get("task") else BOOLQ)  # exports before tasks: BoolQ


def _version() -> str:
    try:
        return importlib.metadata.version("heft")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
