"""Slow (make test-slow): the embedded default preset end to end, as `make demo` runs it."""
import pytest

from heft.pipeline import run_pipeline
from heft.presets import load_run_config


@pytest.mark.slow
def test_minilm_default_preset_beats_majority_on_heldout(boolq_validation, tmp_path):
    cfg = load_run_config("deployments/minilm-boolq.yaml", [f"artifact_root={tmp_path}"])
    out = run_pipeline(cfg)
    heft = out["eval:heft"].metrics
    assert heft["n"] == 1000
    assert heft["accuracy"] > heft["majority_rate"]
    assert out["reft"].metrics["rotation_orthonormality_error"] < 1e-4
