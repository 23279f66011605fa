"""lora.width_multiple / reft.width_multiple: every training batch is padded to the multiple; in
the key only when set (dropout draws its masks over the padded shape); without dropout the
training result is the plain one up to rounding."""
import pytest

from heft.config import ConfigError
from heft.modeling import training
from heft.presets import load_run_config
from heft.run.execute import run_pipeline
from heft.store.keys import stage_key

ARGS = ["mode=heft", "data.holdout_size=40", "data.valid_size=20", "data.max_train=64",
        "model.max_length=48", "lora.epochs=1", "reft.epochs=1", "reft.layer=1", "lora.dropout=0.0",
        "model.autocast=off"]  # float32: bf16 rounds differently in other matmul shapes


def test_batches_are_padded_to_the_multiple_and_train_the_same(stories, keyword_data, tmp_path, monkeypatch):
    widths: list[int] = []
    collate = training.collate

    def recording(enc, idx, pad_id, **kw):
        batch = collate(enc, idx, pad_id, **kw)
        widths.append(batch["input_ids"].shape[1])
        return batch
    monkeypatch.setattr(training, "collate", recording)

    args = [f"data.source={keyword_data}", *ARGS]
    plain = load_run_config("deployments/stories-boolq.yaml", args + [f"artifact_root={tmp_path}/a"])
    padded = load_run_config("deployments/stories-boolq.yaml", args + [
        f"artifact_root={tmp_path}/b", "lora.width_multiple=16", "reft.width_multiple=16"])
    assert stage_key("lora", plain.lora, "p") != stage_key("lora", padded.lora, "p")
    assert stage_key("reft", plain.reft, "p") != stage_key("reft", padded.reft, "p")
    default = load_run_config("deployments/stories-boolq.yaml", args + ["lora.width_multiple=1"])
    assert stage_key("lora", plain.lora, "p") == stage_key("lora", default.lora, "p")  # old keys stay
    compiled = load_run_config("deployments/stories-boolq.yaml",
                               args + ["lora.compile=true", "reft.compile=true"])
    # the compiled path pads to multiples of 64 too: its trained weights are others under dropout
    assert stage_key("lora", plain.lora, "p") != stage_key("lora", compiled.lora, "p")
    assert stage_key("reft", plain.reft, "p") != stage_key("reft", compiled.reft, "p")

    a = run_pipeline(plain)
    plain_widths, widths[:] = list(widths), []
    b = run_pipeline(padded)
    assert any(w % 16 for w in plain_widths), plain_widths  # the plain batches are not aligned already
    assert widths and all(w % 16 == 0 for w in widths), widths
    assert len(widths) == len(plain_widths)
    for stage in ("lora", "reft"):  # no dropout, padding masked: the same losses and accuracies
        ma, mb = a[stage].metrics, b[stage].metrics
        assert ma["final_train_loss"] == pytest.approx(mb["final_train_loss"], rel=1e-4), stage
        assert ma["final_valid_accuracy"] == mb["final_valid_accuracy"], stage


def test_a_width_multiple_below_one_is_refused():
    with pytest.raises(ConfigError, match="lora.width_multiple"):
        load_run_config("deployments/stories-boolq.yaml", ["lora.width_multiple=0"])
