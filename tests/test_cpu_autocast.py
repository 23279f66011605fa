"""CPU bf16 autocast (``model.autocast``, heft/modeling/precision.py).

What is asserted is behaviour, not what the code says about itself: the option refuses a bad
value by name before any work, ``auto`` follows torch's own bf16 probe (simulated absent here
by replacing the probe, not heft's answer), the plan keys on the resolved choice, the forward
passes of training really run in bf16 (a hook sees bf16 activations) while every stored tensor
is float32, and a bf16-autocast run learns the keyword task.
"""
import json

import pytest
import torch
from safetensors import safe_open

from heft.modeling import precision
from heft.plan import plan
from heft.presets import load_run_config
from heft.store.artifacts import ArtifactStore
from heft.run.execute import run_pipeline


def dtypes(path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return {str(f.get_slice(k).get_dtype()).lower() for k in f.keys()}


@pytest.mark.parametrize("bad", ["fp16", "bf16", "AUTO", ""])
def test_a_bad_value_is_refused_with_the_option_named(bad):
    with pytest.raises(ValueError) as err:
        load_run_config(None, [f"model.autocast={bad}"])
    assert str(err.value).startswith(f"model.autocast={bad!r}: one of ")  # the option and the value


def simulate_cpu(monkeypatch, tmp_path, has_bf16: bool):
    """torch's oneDNN probe answers ``has_bf16``; a fresh HEFT_CACHE_DIR so no cached answer."""
    monkeypatch.setenv("HEFT_CACHE_DIR", str(tmp_path / f"cache-{has_bf16}"))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: has_bf16, raising=False)


@pytest.mark.parametrize("has_bf16, expected", [(False, "off"), (True, "bfloat16")])
def test_auto_follows_the_cpus_bf16_support(monkeypatch, tmp_path, has_bf16, expected):
    simulate_cpu(monkeypatch, tmp_path, has_bf16)
    assert precision.resolved("auto") == expected
    # the answer was cached for this CPU and torch: a second process would not import torch
    cached = json.loads((tmp_path / f"cache-{has_bf16}" / "cpu-bf16.json").read_text())
    assert list(cached.values()) == [has_bf16]
    # explicit choices are never overridden by the probe
    assert precision.resolved("off") == "off" and precision.resolved("bfloat16") == "bfloat16"


def test_the_plan_keys_on_the_resolved_precision(monkeypatch, tmp_path, keyword_config):
    """auto on a CPU without bf16 is the same artifact as 'off'; bf16 training is another one."""
    keys = {}
    for name, has_bf16, choice in [("auto-no-bf16", False, "auto"), ("off", False, "off"),
                                   ("bf16", True, "bfloat16"), ("auto-bf16", True, "auto")]:
        simulate_cpu(monkeypatch, tmp_path, has_bf16)
        p = plan(keyword_config(tmp_path, model={"autocast": choice}))
        keys[name] = {s.name: s.key for s in p.steps}
    assert keys["auto-no-bf16"] == keys["off"]
    assert keys["auto-bf16"] == keys["bf16"]
    assert keys["off"]["data"] == keys["bf16"]["data"]  # the data does not depend on it
    for name in ("base", "lora", "merge", "reft", "eval:heft"):
        assert keys["off"][name] != keys["bf16"][name], name


def test_bf16_autocast_trains_in_bf16_stores_float32_and_learns(monkeypatch, keyword_config, tmp_path):
    seen = set()
    original = torch.nn.Linear.forward

    def spy(self, x):  # the dtype each Linear's matmul produced during the run
        out = original(self, x)
        if torch.is_grad_enabled():  # training forward passes only (evaluation runs in no_grad)
            seen.add(out.dtype)
        return out
    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    cfg = keyword_config(tmp_path, model={"autocast": "bfloat16"})
    out = run_pipeline(cfg)
    assert torch.bfloat16 in seen  # autocast really ran the training matmuls in bf16

    store = ArtifactStore(cfg.artifact_root)

    def path(name, *rel):
        return store.local_path(out[name]).joinpath(*rel)
    assert dtypes(next(path("lora").rglob("adapter_model.safetensors"))) == {"f32"}
    assert dtypes(path("merge", "model", "model.safetensors")) == {"f32"}  # merged in float32
    assert dtypes(path("reft", "intervention.safetensors")) == {"f32"}
    assert out["reft"].metrics["rotation_orthonormality_error"] < 1e-5
    # the keyword task (majority ~50%) is learnt under bf16 autocast as in float32
    assert out["eval:lora"].metrics["accuracy"] > 0.85
    assert out["eval:heft"].metrics["accuracy"] > 0.85



def test_off_is_the_word_off_on_the_command_line_and_in_a_preset(tmp_path):
    """YAML 1.1 reads 'off' as False; heft's presets read YAML 1.2 booleans (true/false only)."""
    preset = tmp_path / "p.yaml"
    preset.write_text("model: {autocast: off}\n")
    assert load_run_config(preset).model.autocast == "off"
    assert load_run_config(None, ["model.autocast=off"]).model.autocast == "off"
    assert load_run_config(None, ["model.autocast=bfloat16"]).model.autocast == "bfloat16"
