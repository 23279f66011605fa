"""BoolQ after tasks arrived: the stories260K keyword pipeline and the MiniLM slice give the
accuracies and every row's (true - false) score margin that the code before tasks gave, pinned in
tests/golden/boolq_before_tasks.json (recorded on 2026-12-05 from commit 6253f2a, float32
matmuls: ``model.autocast=off``, so the pin does not depend on the CPU's bf16 support).
torchtune pins reference values the same way; a change of prompt, tokenisation, loss or scoring
on the label path moves the margins."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from heft.presets import load_run_config
from heft.run.execute import run_pipeline
from heft.store.artifacts import ArtifactStore

GOLDEN = json.loads((Path(__file__).parent / "golden" / "boolq_before_tasks.json").read_text())


def margins(store: ArtifactStore, art) -> list[float]:
    lines = (store.local_path(art) / "predictions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    return [r["score_true"] - r["score_false"] for r in rows]


def check(name: str, cfg) -> None:
    out = run_pipeline(cfg)
    store = ArtifactStore(cfg.artifact_root)
    for evaluation, want in GOLDEN[name].items():
        art = out[f"eval:{evaluation}"]
        assert art.metrics["accuracy"] == want["accuracy"], evaluation
        assert margins(store, art) == pytest.approx(want["margins"], abs=1e-4), evaluation


def test_the_stories260k_keyword_pipeline_is_unchanged(keyword_config, tmp_path):
    check("stories_keyword", keyword_config(tmp_path, model={"autocast": "off"}))


def test_the_minilm_slice_is_unchanged(boolq_validation, tmp_path):
    cfg = load_run_config("deployments/minilm-boolq.yaml", [
        f"artifact_root={tmp_path}", "data.max_train=32", "data.valid_size=16", "data.max_eval=32",
        "lora.epochs=1", "model.max_length=64", "model.autocast=off",
        # the golden file was written before the preset padded widths to 64 (lora.width_multiple)
        "lora.width_multiple=1", "reft.width_multiple=1"])
    check("minilm_slice", cfg)
