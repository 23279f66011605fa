"""Per-epoch checkpoints: a longer constant-schedule run continues a shorter one bit for bit,
an interrupted stage resumes, and a linear schedule never shares a trajectory across epochs."""
import dataclasses
import json

import pytest
from safetensors.torch import load_file

from heft.store.artifacts import ArtifactStore
from heft.store.checkpoints import EpochCheckpoints, trajectory_key
from heft.config import DataConfig, LoraConfig, ModelConfig, ReftConfig, RunConfig
from heft.run.execute import run_pipeline
from heft.plan import plan
from heft.progress import Progress
from heft.stages import run_step


@pytest.fixture
def cfg(stories, keyword_data, tmp_path):
    return RunConfig(model=ModelConfig(name=str(stories), max_length=64),
                     data=DataConfig(source=str(keyword_data), holdout_size=60, valid_size=40, max_train=96),
                     lora=LoraConfig(epochs=2, lr=3e-3, schedule="constant", warmup_ratio=0.2),
                     reft=ReftConfig(epochs=2, lr=1e-2, layer=3, schedule="constant", warmup_ratio=0.2),
                     mode="lora-only", artifact_root=str(tmp_path / "a"))


def with_epochs(cfg, stage, epochs, **kw):
    return dataclasses.replace(cfg, **{stage: dataclasses.replace(getattr(cfg, stage), epochs=epochs)}, **kw)


def tensors(out, stage, name):
    store = ArtifactStore(out[stage].uri.rsplit(f"/{stage}/", 1)[0])
    return load_file(str(store.local_path(out[stage]) / name))


def curves(art):
    return [{k: v for k, v in h.items() if k not in ("epoch_seconds", "train_examples_per_second")}
            for h in json.loads(open(f"{art.uri}/history.json").read())]


@pytest.mark.parametrize("stage,mode,weights", [
    # the LoRA case in the long tier (40 s); the same continuation code serves both stages
    pytest.param("lora", "lora-only", "adapter/adapter_model.safetensors", marks=pytest.mark.long),
    ("reft", "reft-only", "intervention.safetensors")])
def test_longer_constant_run_continues_shorter_one_exactly(cfg, tmp_path, stage, mode, weights):
    cfg = dataclasses.replace(cfg, mode=mode)
    short = run_pipeline(with_epochs(cfg, stage, 2))
    longer = run_pipeline(with_epochs(cfg, stage, 3))
    fresh = run_pipeline(with_epochs(cfg, stage, 3, artifact_root=str(tmp_path / "b")))
    assert short[stage].metrics["resumed_from_epoch"] == 0
    assert longer[stage].metrics["resumed_from_epoch"] == 2
    assert fresh[stage].metrics["resumed_from_epoch"] == 0
    a, b = tensors(longer, stage, weights), tensors(fresh, stage, weights)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bit-identical
    assert curves(longer[stage]) == curves(fresh[stage]) and len(curves(longer[stage])) == 3
    final = "eval:merged" if stage == "lora" else "eval:reft"
    assert longer[final].metrics == fresh[final].metrics
    # and back: a 1-epoch stage now trains nothing, it restores epoch 1
    assert run_pipeline(with_epochs(cfg, stage, 1))[stage].metrics["resumed_from_epoch"] == 1


def test_linear_schedule_keys_trajectory_by_epochs(cfg):
    lin = dataclasses.replace(cfg.lora, schedule="linear")
    assert trajectory_key("lora", lin, "p") != trajectory_key("lora", dataclasses.replace(lin, epochs=5), "p")
    assert trajectory_key("lora", cfg.lora, "p") == trajectory_key(
        "lora", dataclasses.replace(cfg.lora, epochs=5), "p")
    short = run_pipeline(dataclasses.replace(cfg, lora=dataclasses.replace(lin, epochs=1)))
    longer = run_pipeline(dataclasses.replace(cfg, lora=dataclasses.replace(lin, epochs=2)))
    assert short["lora"].metrics["resumed_from_epoch"] == longer["lora"].metrics["resumed_from_epoch"] == 0


def test_interrupted_stage_resumes_from_last_epoch(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, epochs=3, schedule="linear"))
    store = ArtifactStore(cfg.artifact_root)
    steps = plan(cfg)
    data = run_step(steps["data"], None, store)
    base = run_step(steps["base"], data, store)

    def crash(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt("simulated interruption after epoch 2")
    with pytest.raises(KeyboardInterrupt):
        run_step(steps["lora"], base, store, Progress(on_epoch=crash))
    assert store.find("lora", steps["lora"].key) is None  # no half-made artifact
    assert EpochCheckpoints(store, "lora", cfg.lora, base.key).epochs() == [1, 2]
    resumed = run_step(steps["lora"], base, store)
    fresh = run_pipeline(dataclasses.replace(cfg, artifact_root=str(tmp_path / "c")))["lora"]
    assert resumed.metrics["resumed_from_epoch"] == 2
    assert resumed.metrics["final_valid_accuracy"] == fresh.metrics["final_valid_accuracy"]
    assert resumed.metrics["final_train_loss"] == fresh.metrics["final_train_loss"]
