"""Content checks where a model leaves heft: an export carries the sha256 of its files in
heft.json (and heft.json a digest of itself), and ``heft.load`` refuses a folder whose bytes
differ, naming the file, before any weights load and before anything is predicted.  The MLflow
model's copy of an export is the same folder and is refused the same way, loaded through
``runs:/`` or by MLflow's own pyfunc loader.  Also: two exports into one folder at once.

The model is the tiny Llama with a fresh LoReFT intervention (untrained: the checks are about
bytes, not accuracy), so the default tier pays no training."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

import heft
from heft.config import ConfigError
from heft.inference.export import export

ROWS = [{"question": "is the cat happy today", "passage": "A short story, number 1."},
        {"question": "is the dog sad today", "passage": "A short story, number 2."}]


def flip(path: Path, offset: int = -8) -> None:
    """Overwrite 4 bytes in place: the size stays the same, only the sha256 can tell."""
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = bytes(b ^ 0xFF for b in data[offset:offset + 4])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def model(tiny_llama):
    import torch
    from heft.inference.model import HeftModel
    from heft.modeling import models
    from heft.modeling.loreft import Intervention, LoReFT
    tok = models.load_tokenizer(str(tiny_llama), "causal-lm")
    torch.manual_seed(0)
    loreft = LoReFT(32, 4)
    with torch.no_grad():  # a visible edit: a flipped intervention byte must be able to change a score
        loreft.learned_source.bias.normal_(0, 1.0)
    return HeftModel(model=models.load_model(str(tiny_llama), "causal-lm").eval(), tokenizer=tok,
                     family="causal-lm", pooling="cls", format="passage", max_length=32,
                     intervention=Intervention(loreft.eval(), layer=1, positions="f1+l1"),
                     answer_ids=models.answer_token_ids(tok),
                     card={"model_config": {"name": "tiny-llama", "dtype": "float32"}})


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> tuple[Path, list[dict]]:
    """An export and what it serves intact."""
    folder = tmp_path_factory.mktemp("export") / "model"
    export(model, str(folder))
    return folder, heft.load(str(folder)).predict(ROWS)


def damaged_copy(exported, tmp_path, rel: str, offset: int = -8) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(exported[0], folder)
    flip(folder / rel, offset)
    return folder


@pytest.mark.parametrize("rel", ["intervention/intervention.safetensors", "model/model.safetensors",
                                 "model/tokenizer.json"])
def test_a_flipped_byte_in_an_export_is_refused_naming_the_file(exported, tmp_path, rel):
    folder = damaged_copy(exported, tmp_path, rel)
    with pytest.raises(ConfigError, match=f"{rel}: sha256 differs"):
        heft.load(str(folder))


def test_an_edited_heft_json_is_refused(exported, tmp_path):
    """heft.json says how to read the weights (prompt format, length, answer tokens): an edit
    that still parses must be refused too, so it carries a digest of its own content."""
    folder = tmp_path / "copy"
    shutil.copytree(exported[0], folder)
    spec = json.loads((folder / "heft.json").read_text())
    spec["max_length"] = 16
    (folder / "heft.json").write_text(json.dumps(spec, indent=2))
    with pytest.raises(ConfigError, match="heft.json: its content differs from its digest"):
        heft.load(str(folder))
    (folder / "heft.json").write_bytes(b"\xff" + (folder / "heft.json").read_bytes()[1:])
    with pytest.raises(ConfigError, match="heft.json"):
        heft.load(str(folder))


@pytest.fixture(scope="module")
def logged(exported, model, tmp_path_factory):
    """The MLflow model of an export (as mlflow_model.log_model writes it), its runs:/ URI and
    the folder where MLflow's artifact store keeps its copy of the export."""
    import mlflow
    from mlflow.models import Model
    from heft.inference.mlflow_model import _python_model
    tmp = tmp_path_factory.mktemp("mlflow")
    tracking = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(tracking)
    experiment = mlflow.create_experiment("exit-checks", artifact_location=str(tmp / "store"))
    mlflow.set_experiment(experiment_id=experiment)  # else the logged model lands in experiment 0
    folder = tmp / "heft"
    export(model, str(folder), pyreft_layout=False)
    run = mlflow.MlflowClient(tracking).create_run(experiment)
    Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run.info.run_id,
              python_model=_python_model(), artifacts={"heft": str(folder)}, pip_requirements=[])
    (stored,) = {p.parent for p in (tmp / "store").rglob("artifacts/heft/heft.json")}
    return f"runs:/{run.info.run_id}/model", tracking, stored


def test_the_mlflow_models_copy_is_checked_when_loaded_through_runs(logged, exported):
    uri, tracking, stored = logged
    assert heft.load(uri, tracking_uri=tracking).predict(ROWS) == exported[1]
    target = stored / "intervention" / "intervention.safetensors"
    original = target.read_bytes()
    flip(target)
    try:
        with pytest.raises(ConfigError, match="intervention/intervention.safetensors: sha256 differs"):
            heft.load(uri, tracking_uri=tracking)
    finally:
        target.write_bytes(original)


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow  # one load per file of the export and of the MLflow copy (~40 loads)
def test_bytes_flipped_in_every_file_of_an_export_and_its_mlflow_copy_are_never_served(
        exported, logged, tmp_path):
    """Fault injection at the exit: 4 bytes flipped at a seeded offset in every file of an
    export (pyreft layout included) and of the MLflow model's copy, one at a time.  Each must
    be refused by heft.load (and by MLflow's pyfunc loader), and nothing is ever predicted
    from a damaged folder: 0 wrong numbers served."""
    import mlflow
    folder, want = exported
    uri, tracking, stored = logged
    rng, rows = random.Random(0), []

    def attempt(load) -> str:
        try:
            out = load()
        except ConfigError as e:
            return "refused" if "differs" in str(e) or "not valid" in str(e) else f"other: {e}"
        return "served right" if out == want else "served WRONG"

    for rel in files_of(folder):
        size = (folder / rel).stat().st_size
        target = damaged_copy(exported, tmp_path / rel.replace("/", "_"), rel, rng.randrange(size - 3))
        rows.append(("export", rel, attempt(lambda: heft.load(str(target)).predict(ROWS))))
    mlflow.set_tracking_uri(tracking)
    for rel in files_of(stored):
        path = stored / rel
        original = path.read_bytes()
        flip(path, rng.randrange(len(original) - 3))
        try:
            rows.append(("mlflow runs:/", rel, attempt(lambda: heft.load(uri, tracking_uri=tracking)
                                                       .predict(ROWS))))
            try:
                served = mlflow.pyfunc.load_model(uri).predict(__import__("pandas").DataFrame(ROWS))
                rows.append(("mlflow pyfunc", rel, "served right" if served.to_dict("records") == want
                             else "served WRONG"))
            except Exception as e:  # noqa: BLE001 - MLflow wraps load_context's error
                rows.append(("mlflow pyfunc", rel, "refused" if "differs" in str(e) or "not valid" in str(e)
                             else f"other: {e}"))
        finally:
            path.write_bytes(original)
    for row in rows:
        print(*row)
    assert len([r for r in rows if r[0] == "export"]) >= 10  # weights, tokenizer, intervention, pyreft, card
    assert [r for r in rows if r[2] != "refused"] == []


def test_two_exports_into_one_empty_folder_at_once_give_a_clear_error(tmp_path, monkeypatch):
    """The second export to finish finds the folder filled by the first: refused by name,
    and the first export's folder stays whole."""
    from heft.inference import export as ex
    dest = tmp_path / "out"
    dest.mkdir()
    calls = []

    def write(model, folder, pyreft_layout=True):
        if not calls:  # the other export runs to the end while this one is still writing
            calls.append(1)
            ex.export(model, str(dest))
        (folder / "heft.json").write_text(json.dumps({"writer": len(calls)}))
        calls.append(1)
    monkeypatch.setattr(ex, "write_folder", write)
    with pytest.raises(FileExistsError, match=f"{dest}.*another export"):
        ex.export(object(), str(dest))
    assert json.loads((dest / "heft.json").read_text()) == {"writer": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
