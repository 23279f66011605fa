"""The library chain on real small models, without Prefect: learning, merge equivalence,
intervention applied at evaluation, and which stages a config change reruns."""
import json

import pytest

from heft.store.artifacts import ArtifactStore
from heft.config import DataConfig, LoraConfig, ModelConfig, ReftConfig, RunConfig
from heft.run.execute import run_pipeline


@pytest.fixture(scope="module")
def heft_run(keyword_config, tmp_path_factory):
    cfg = keyword_config(tmp_path_factory.mktemp("art"))
    return cfg, run_pipeline(cfg)


def test_heft_learns_keyword_task(heft_run):
    _, out = heft_run
    majority = out["eval:heft"].metrics["majority_rate"]
    assert 0.4 < majority < 0.65
    assert out["eval:lora"].metrics["accuracy"] > 0.85
    assert out["eval:heft"].metrics["accuracy"] > 0.85
    assert out["lora"].metrics["final_valid_accuracy"] > 0.8


def test_merge_matches_adapter(heft_run):
    _, out = heft_run
    assert out["merge"].metrics["merge_max_abs_diff"] < 1e-4
    assert out["eval:merged"].metrics["accuracy"] == out["eval:lora"].metrics["accuracy"]


def test_intervention_is_trained_orthonormal_and_applied_in_eval(heft_run):
    cfg, out = heft_run
    m = out["reft"].metrics
    assert m["rotation_orthonormality_error"] < 1e-4
    assert m["intervention_mean_abs_score_change"] > 1e-3
    store = ArtifactStore(cfg.artifact_root)

    def read(name):
        return [json.loads(line) for line in open(store.local_path(out[name]) / "predictions.jsonl")]
    merged, heft = read("eval:merged"), read("eval:heft")
    assert len(merged) == len(heft) == 100
    assert max(abs(a["score_true"] - b["score_true"]) for a, b in zip(merged, heft)) > 1e-3


def test_rerun_reuses_and_layer_change_reruns_only_reft(heft_run):
    cfg, out = heft_run
    again = run_pipeline(cfg)
    assert all(again[k].meta.get("created") == out[k].meta.get("created") for k in out)
    import dataclasses
    moved = run_pipeline(dataclasses.replace(cfg, reft=dataclasses.replace(cfg.reft, layer=2)))
    for name in ("data", "lora", "merge", "eval:lora", "eval:merged"):
        assert moved[name].key == out[name].key
    assert moved["reft"].key != out["reft"].key and moved["eval:heft"].key != out["eval:heft"].key
    assert moved["reft"].meta["config"]["layer"] == 2


def test_reft_only_then_reverse_order_reft_lora(keyword_config, tmp_path):
    import dataclasses
    cfg = keyword_config(tmp_path, mode="reft-only")
    out = run_pipeline(cfg)
    assert set(out) == {"data", "base", "reft", "eval:reft"}
    assert out["reft"].parent_key == out["base"].key
    assert out["eval:reft"].metrics["accuracy"] > 0.8
    # ReFT -> LoRA: the same ReFT artifact, then LoRA trained with that intervention frozen in place
    rev = run_pipeline(dataclasses.replace(cfg, mode="reft-lora"))
    assert set(rev) == {"data", "base", "reft", "eval:reft", "lora", "eval:reft-lora"}
    assert rev["reft"].meta["created"] == out["reft"].meta["created"]  # reused, not retrained
    assert rev["lora"].parent_key == out["reft"].key
    assert rev["lora"].lineage("intervention") == f"artifact:reft/{out['reft'].key}"
    assert rev["eval:reft-lora"].metrics["accuracy"] > 0.85
    store = ArtifactStore(cfg.artifact_root)

    def read(name):
        return [json.loads(line) for line in open(store.local_path(rev[name]) / "predictions.jsonl")]
    assert max(abs(a["score_true"] - b["score_true"])
               for a, b in zip(read("eval:reft"), read("eval:reft-lora"))) > 1e-3  # LoRA changed it


def test_base_mode_evaluates_untrained_model(keyword_config, tmp_path):
    out = run_pipeline(keyword_config(tmp_path, mode="base"))
    assert set(out) == {"data", "base", "eval:base"}
    assert out["eval:base"].metrics["accuracy"] < 0.7  # an untrained model does not know the keyword


def test_boolq_passage_causal_path_end_to_end(stories, boolq_validation, tmp_path):
    cfg = RunConfig(model=ModelConfig(name=str(stories), max_length=96),
                    data=DataConfig(source=str(boolq_validation), holdout_size=64, valid_size=32,
                                    max_train=64),
                    lora=LoraConfig(epochs=1, lr=1e-3), reft=ReftConfig(epochs=1, lr=1e-3, layer=4),
                    artifact_root=str(tmp_path))
    out = run_pipeline(cfg)
    metrics = out["eval:heft"].metrics
    assert metrics["n"] == 64 and 0 <= metrics["ci95_low"] <= metrics["accuracy"] <= metrics["ci95_high"] <= 1


def test_minilm_seq_cls_path_small(boolq_validation, tmp_path):
    """The encoder family (offline MiniLM, mean pooling, trained head) through every stage."""
    from heft.presets import load_run_config
    cfg = load_run_config("deployments/minilm-boolq.yaml", [
        f"artifact_root={tmp_path}", "data.max_train=32", "data.valid_size=16", "data.max_eval=32",
        "lora.epochs=1", "model.max_length=64"])
    out = run_pipeline(cfg)
    assert out["base"].lineage("family") == "seq-cls" and out["base"].lineage("depth") == 6
    assert out["merge"].metrics["merge_max_abs_diff"] < 1e-4
    store = ArtifactStore(cfg.artifact_root)
    assert (store.local_path(out["reft"]) / "head.safetensors").exists()
    assert out["reft"].metrics["rotation_orthonormality_error"] < 1e-4
    assert out["eval:merged"].metrics["accuracy"] == out["eval:lora"].metrics["accuracy"]
    assert out["eval:heft"].metrics["n"] == 32
    # heft.load of the encoder's HEFT model (head trained by ReFT, mean pooling, intervention)
    # gives the evaluation stage's scores, before and after an export
    import heft
    from heft.data.sources import read_split
    rows = read_split(store.local_path(out["data"]), "eval")
    predictions = store.local_path(out["eval:heft"]) / "predictions.jsonl"
    want = [json.loads(line)["score_true"] for line in open(predictions)]
    model = heft.load(out["eval:heft"].key, root=cfg.artifact_root)
    assert model.family == "seq-cls" and model.pooling == "mean"
    assert model.intervention.layer == cfg.reft.layer
    assert [o["score_true"] for o in model.predict(rows)] == want
    from heft.inference.export import export
    exported = heft.load(export(model, str(tmp_path / "exported")))
    assert [o["score_true"] for o in exported.predict(rows)] == pytest.approx(want, abs=1e-5)
    # reverse order on an encoder: LoRA continues the head ReFT trained, with R frozen in place
    import dataclasses
    rev = run_pipeline(dataclasses.replace(cfg, mode="reft-lora"))
    assert rev["lora"].lineage("head").endswith("/head.safetensors")
    assert rev["eval:reft-lora"].metrics["n"] == 32
