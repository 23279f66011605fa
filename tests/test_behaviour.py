"""The central claims asserted by behaviour, on the tiny Llama (no ../shared): a rerun calls no
stage function at all; the trained intervention sits and acts at its configured layer, read off
the live model; the merge, not ReFT alone, carries HEFT over the threshold; merge equivalence is
computed by the test over every token and the whole vocabulary."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import heft
from heft.config import LoraConfig, ReftConfig
from heft.modeling.models import transformer_layers
from heft.run.execute import run_pipeline
from tiny_models import prompts_of


@pytest.fixture(scope="module")
def heft_run(tiny_config, tmp_path_factory):
    # a ReFT stage too weak to learn the task alone (1 epoch, small lr): HEFT can only pass the
    # threshold on the LoRA update the merge carried into its weights
    cfg = tiny_config(tmp_path_factory.mktemp("behaviour"), lora=LoraConfig(epochs=2, lr=1e-2),
                      reft=ReftConfig(epochs=1, lr=1e-4, layer=2, positions="f1+l1"))
    return cfg, run_pipeline(cfg)


def test_a_rerun_calls_no_stage_function(heft_run, monkeypatch):
    import heft.stages as stages
    cfg, out = heft_run
    calls = []
    real = stages.builder

    def counted(stage):
        calls.append(stage)
        return real(stage)
    monkeypatch.setattr(stages, "builder", counted)
    again = run_pipeline(cfg)
    assert calls == [], f"stages built again: {calls}"
    assert {k: a.key for k, a in again.items()} == {k: a.key for k, a in out.items()}


def test_heft_passes_the_threshold_only_through_the_merged_lora(heft_run, tiny_config, tmp_path):
    cfg, out = heft_run
    assert out["eval:heft"].metrics["accuracy"] > 0.85
    reft_only = run_pipeline(dataclasses.replace(cfg, mode="reft-only", artifact_root=str(tmp_path)))
    assert reft_only["eval:reft"].metrics["accuracy"] < 0.7  # the same ReFT stage on the base cannot


def test_the_trained_intervention_sits_and_acts_at_its_configured_layer(heft_run):
    cfg, out = heft_run
    model = heft.load(out["eval:heft"].key, root=cfg.artifact_root)
    iv = model.intervention
    assert (iv.layer, iv.positions) == (cfg.reft.layer, cfg.reft.positions)
    layers = transformer_layers(model.model)
    enc = model.tokenizer(["is the cat happy today ? Answer :"], return_tensors="pt")
    seen, hooked = {}, []

    def grab(i):
        def hook(module, args, kwargs):
            seen.setdefault(i, []).append((args[0] if args else kwargs["hidden_states"]).clone())
        return hook
    handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(layers)]
    with torch.no_grad():
        model.model(**enc)
        with iv.attached(layers):
            hooked = [i for i, layer in enumerate(layers) if layer._forward_hooks]
            iv.set_batch(prompts_of(enc["attention_mask"]))
            model.model(**enc)
    for h in handles:
        h.remove()
    assert hooked == [cfg.reft.layer]  # placement read from the live model
    for i in range(len(layers)):  # block i's input is block i-1's output
        same = torch.equal(seen[i][0], seen[i][1])
        assert same == (i <= cfg.reft.layer), f"block {i} input {'unchanged' if same else 'changed'}"


def test_merged_weights_equal_base_plus_adapter_over_all_tokens(heft_run):
    """Computed here, not read from the merge stage's own report."""
    from peft import PeftModel
    from heft.modeling.models import load_model
    from heft.stages.inputs import StageInputs
    from heft.store.artifacts import ArtifactStore
    cfg, out = heft_run
    store = ArtifactStore(cfg.artifact_root)
    inputs = StageInputs.of(out["lora"], store)
    base = load_model(cfg.model.name, "causal-lm")
    adapted = PeftModel.from_pretrained(base, inputs.resolve(out["lora"].lineage("adapter"))).eval()
    merged = load_model(str(store.local_path(out["merge"]) / "model"), "causal-lm").eval()
    tok = inputs.tokenizer()
    enc = tok(["is the cat happy today ? Answer :", "a short story , number 7 . is my friend sad ?"],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        a = adapted(**enc).logits[enc["attention_mask"].bool()]
        b = merged(**enc).logits[enc["attention_mask"].bool()]
        plain = load_model(cfg.model.name, "causal-lm").eval()(**enc).logits[enc["attention_mask"].bool()]
    assert (a - plain).abs().max() > 1e-2      # the adapter moved the model
    assert (a - b).abs().max() < 1e-5          # and the merged weights reproduce it, every token and word
