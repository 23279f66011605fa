"""lora.gradient_checkpointing: outside the cache key, and the same training result."""
import pytest

from heft.store.artifacts import ArtifactStore
from heft.store.keys import stage_key
from heft.run.execute import run_pipeline
from heft.presets import load_run_config


def test_checkpointing_is_not_in_the_key_and_trains_the_same(stories, keyword_data, tmp_path):
    args = [f"data.source={keyword_data}", "mode=lora-only", "data.holdout_size=40", "data.valid_size=20",
            "data.max_train=64", "model.max_length=32", "lora.epochs=1", "lora.dropout=0.1"]
    plain = load_run_config("deployments/stories-boolq.yaml", args + [f"artifact_root={tmp_path}/a"])
    ckpt = load_run_config("deployments/stories-boolq.yaml",
                           args + [f"artifact_root={tmp_path}/b", "lora.gradient_checkpointing=true"])
    assert ckpt.lora.gradient_checkpointing and not plain.lora.gradient_checkpointing
    assert stage_key("lora", plain.lora, "p") == stage_key("lora", ckpt.lora, "p")
    a, b = run_pipeline(plain)["lora"], run_pipeline(ckpt)["lora"]
    # recomputation replays dropout from the saved RNG state: the same losses, to rounding
    assert a.metrics["final_train_loss"] == pytest.approx(b.metrics["final_train_loss"], rel=1e-5)
    assert a.metrics["final_valid_accuracy"] == b.metrics["final_valid_accuracy"]
    assert ArtifactStore(f"{tmp_path}/b").find("lora", a.key) is not None
