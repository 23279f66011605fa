"""The trained model leaves heft: heft.load by every kind of reference, predictions equal to the
evaluation stage's scores, export that survives deleting the store, pyreft reading the exported
intervention, the MLflow pyfunc model, the registry alias, a served model answering REST,
moved roots, and bad references or rows refused before any weights load.  On the tiny Llama
(no ../shared) with the keyword task."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import heft
from heft.config import ConfigError, LoraConfig, ReftConfig
from heft.data.sources import DataError, read_split
from heft.store.artifacts import ArtifactStore


@pytest.fixture(scope="module")
def trained(harness, tiny_config, tmp_path_factory):
    """One heft flow run (keyword task, tiny Llama): the run, its store and MLflow store."""
    from flows.heft_flow import heft as heft_flow
    tmp = tmp_path_factory.mktemp("exit")
    cfg = tiny_config(tmp / "art", tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                      lora=LoraConfig(epochs=2, lr=1e-2), reft=ReftConfig(epochs=2, lr=1e-2, layer=1))
    result = heft_flow(cfg)
    store = ArtifactStore(cfg.artifact_root)
    evaluation = store.find("evaluate", result.model["key"])
    return {"tmp": tmp, "cfg": cfg, "result": result, "store": store, "evaluation": evaluation}


def heldout(trained) -> tuple[list[dict], list[dict]]:
    """The held-out rows and the evaluation stage's predictions on them (same order)."""
    store, evaluation = trained["store"], trained["evaluation"]
    data = store.find("data", evaluation.lineage("data_key"))
    rows = read_split(store.local_path(data), "eval")
    preds = [json.loads(line) for line in (store.local_path(evaluation) / "predictions.jsonl").open()]
    return rows, preds


def test_predictions_equal_the_evaluation_stages_scores(trained):
    rows, preds = heldout(trained)
    model = heft.load(trained["evaluation"].key, root=trained["cfg"].artifact_root)
    out = model.predict(rows)
    assert [o["score_true"] for o in out] == [p["score_true"] for p in preds]   # bit for bit
    assert [o["score_false"] for o in out] == [p["score_false"] for p in preds]
    assert [int(o["label"]) for o in out] == [p["pred"] for p in preds]
    assert model.intervention is not None and model.intervention.layer == 1
    accuracy = sum(o["label"] == r["label"] for o, r in zip(out, rows)) / len(rows)
    assert accuracy == trained["evaluation"].metrics["accuracy"] > 0.85  # the keyword task was learnt
    assert 0 < out[0]["probability"] < 1 and (out[0]["probability"] > 0.5) == out[0]["label"]


def test_load_by_every_kind_of_reference(trained):
    rows, preds = heldout(trained)
    store, evaluation, result = trained["store"], trained["evaluation"], trained["result"]
    tracking = trained["cfg"].tracking_uri
    model_key = evaluation.lineage("evaluated").split("/")[-1]
    refs = {"evaluation key": (evaluation.key, {"root": store.root}),
            "model key": (model_key, {"root": store.root}),
            "artifact folder": (evaluation.uri, {}),
            "mlflow run id": (result.mlflow_run_id, {"tracking_uri": tracking}),
            "runs:/ uri": (result.model["uri"], {"tracking_uri": tracking})}
    want = [p["score_true"] for p in preds[:20]]
    for name, (ref, kw) in refs.items():
        got = [o["score_true"] for o in heft.load(ref, **kw).predict(rows[:20])]
        assert got == pytest.approx(want, abs=1e-6), name


def test_export_then_delete_the_store_then_load(trained, tmp_path):
    rows, preds = heldout(trained)
    exported = tmp_path / "exported"
    assert heft_cli(["export", "--model", trained["evaluation"].key, "--root", trained["store"].root,
                     "--to", str(exported)]) == 0
    moved = tmp_path / "moved-store"
    shutil.move(trained["store"].root, moved)  # no artifact store, no MLflow where it was
    try:
        spec = json.loads((exported / "heft.json").read_text())
        assert spec["intervention"]["layer"] == 1 and spec["prompt_format"] == "passage"
        assert "Held-out accuracy" in (exported / "README.md").read_text()
        out = heft.load(str(exported)).predict(rows)
        assert [o["score_true"] for o in out] == pytest.approx([p["score_true"] for p in preds], abs=1e-5)
        # the moved root still serves its artifacts; the old place reports them missing
        key = trained["evaluation"].key
        assert heft.load(key, root=str(moved)).predict(rows[:3])[0]["label"] == out[0]["label"]
        with pytest.raises(ConfigError, match=f"model reference '{key}': no artifact with this key"):
            heft.load(key, root=trained["store"].root)
    finally:
        shutil.move(str(moved), trained["store"].root)


def test_pyreft_reads_the_exported_intervention(trained, tmp_path):
    import torch
    pyreft = pytest.importorskip("pyreft")
    model = heft.load(trained["evaluation"].key, root=trained["store"].root)
    heft_cli(["export", "--model", trained["evaluation"].key, "--root", trained["store"].root,
              "--to", str(tmp_path / "x")])
    folder = tmp_path / "x" / "intervention"
    config = json.loads((folder / "config.json").read_text())
    key = config["sorted_keys"][0]
    theirs = pyreft.LoreftIntervention(embed_dim=32, low_rank_dimension=4, dtype=torch.float32)
    theirs.load_state_dict(torch.load(folder / f"intkey_{key}.bin"))
    h = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(h), model.intervention.loreft(h), rtol=0, atol=1e-6)
    assert config["representations"][0][:5] == [1, "block_output", "pos", 1, 4]


def test_mlflow_pyfunc_model_loads_and_predicts(trained):
    import mlflow
    import pandas as pd
    rows, preds = heldout(trained)
    mlflow.set_tracking_uri(trained["cfg"].tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(trained["result"].model["uri"])
    frame = pd.DataFrame([{"question": r["question"], "passage": r["passage"]} for r in rows[:10]])
    out = pyfunc.predict(frame)
    assert list(out.columns) == ["label", "probability", "score_false", "score_true"]
    assert list(out["score_true"]) == pytest.approx([p["score_true"] for p in preds[:10]], abs=1e-5)
    assert pyfunc.metadata.signature is not None


def test_registry_alias_and_the_served_model_answers_rest(trained, tmp_path):
    import mlflow
    from mlflow import MlflowClient
    from heft.inference.mlflow_model import register
    run_id = trained["result"].model["uri"].split("/")[1]
    tracking = trained["cfg"].tracking_uri
    out = register("heft-test", trained["result"].model["uri"], run_id, tracking, {"heft.cell": "tiny"},
                   "the tiny model", valid=1.0, data_key="data-key")
    version = out["version"]
    assert out["alias"] == "champion" and out["previous"] is None  # the first version of the name
    client = MlflowClient(tracking, registry_uri=tracking)
    champion = client.get_model_version_by_alias("heft-test", "champion")
    assert str(champion.version) == version and champion.tags["heft.cell"] == "tiny"
    rows, preds = heldout(trained)
    mlflow.set_registry_uri(tracking)
    assert heft.load("models:/heft-test@champion", tracking_uri=tracking).predict(rows[:1])[0]["label"] == \
        bool(preds[0]["pred"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # mlflow models serve execs `uvicorn` from PATH: the virtualenv's bin folder must be on it
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking,
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/heft-test@champion",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow models serve exited"
                time.sleep(0.5)
        body = json.dumps({"dataframe_records": [{"question": r["question"], "passage": r["passage"]}
                                                 for r in rows[:3]]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                     {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
        assert [a["label"] for a in answer] == [bool(p["pred"]) for p in preds[:3]]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the CLI and the uvicorn it execs share the group
        server.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)  # anyone left in the group?
            time.sleep(0.2)
        except ProcessLookupError:
            break
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)  # stopped


def heft_cli(argv) -> int:
    from flows.cli import main
    return main(argv)


def test_bad_references_and_rows_fail_before_any_weights_load(trained, tmp_path, monkeypatch):
    from heft.inference.load import prompt_format, resolve
    from heft.inference.model import check_rows
    from heft.modeling import models

    def no_weights(*args, **kwargs):
        pytest.fail("weights were loaded")
    monkeypatch.setattr(models, "load_model", no_weights)
    root = trained["store"].root
    with pytest.raises(ConfigError, match="no artifact with this key"):
        resolve("0" * 20, root)
    with pytest.raises(ConfigError, match="not an artifact key"):
        resolve("not-a-model", root)
    unfinished = tmp_path / "reft" / ("a" * 20)
    unfinished.mkdir(parents=True)
    with pytest.raises(ConfigError, match="unfinished"):
        resolve(str(unfinished), root)
    lora_key = next(s.key for s in trained["result"].stages if s.stage == "lora")
    lora = trained["store"].find("lora", lora_key)
    not_evaluated = tmp_path / "copy"
    ArtifactStore(str(not_evaluated))  # a root holding only the LoRA artifact: never evaluated
    shutil.copytree(lora.uri, not_evaluated / "lora" / lora.key)
    with pytest.raises(ConfigError, match="has not been evaluated"):
        resolve(lora.key, str(not_evaluated))
    fmt = prompt_format(resolve(trained["evaluation"].key, root))
    with pytest.raises(DataError, match="row 1: 'question' must be a non-empty string"):
        check_rows([{"question": "is it", "passage": "p"}, {"passage": "p"}], fmt)
    with pytest.raises(DataError, match="row 0: this model reads a passage"):
        check_rows([{"question": "is it"}], fmt)
    rows = tmp_path / "rows.jsonl"
    bad = [{"question": "is it", "passage": "p"}, {"passage": "x"}]
    rows.write_text("".join(json.dumps(r) + "\n" for r in bad))
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = heft_cli(["predict", "--model", trained["evaluation"].key, "--root", root,
                         "--input", str(rows)])
    assert code == 2
    assert "heft: error: row 1: 'question' must be a non-empty string" in err.getvalue()
