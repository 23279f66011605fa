"""Slow (make test-slow): the embedded default preset end to end, as `make demo` runs it."""
import pytest

from heft.run.execute import run_pipeline
from heft.presets import load_run_config


@pytest.mark.slow
def test_minilm_default_preset_learns_on_the_official_dev_split(boolq_validation, tmp_path):
    """Trained on official train rows, scored on the whole dev split: the HEFT model must learn
    BoolQ, not its label prior (the lower end of its 95% interval above the majority rate)."""
    cfg = load_run_config("deployments/minilm-boolq.yaml", [f"artifact_root={tmp_path}"])
    out = run_pipeline(cfg)
    heft = out["eval:heft"].metrics
    assert heft["n"] == 3270
    assert abs(heft["majority_rate"] - 2033 / 3270) < 1e-9  # "true" is 62.17% of the dev split
    assert heft["ci95_low"] > heft["majority_rate"]
    assert out["reft"].metrics["rotation_orthonormality_error"] < 1e-4
