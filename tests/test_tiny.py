"""Exact checks on tiny random models (tests/tiny_models.py; no ../shared): merge
equivalence over every token and the whole vocabulary, safe_merge refusing a NaN, where the
intervention sits and acts, and a reloaded intervention keeping its layer and positions."""
import pytest
import torch

from heft.modeling.loreft import Intervention, LoReFT
from heft.modeling.models import load_model, load_tokenizer, transformer_layers
from tiny_models import prompts_of


@pytest.fixture
def llama(tiny_llama):
    return load_model(str(tiny_llama), "causal-lm").eval()


def batch(tiny_llama):
    tok = load_tokenizer(str(tiny_llama), "causal-lm")
    enc = tok(["is the cat happy today ? Answer :", "is a dog sad ? Answer :"], padding=True,
              return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def adapted(model, seed=1):
    """peft LoRA on q/k/v/o with a random, non-zero B (a fresh adapter is the identity)."""
    from peft import LoraConfig, get_peft_model
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj",
                                                                                     "v_proj", "o_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return peft_model.eval()


def test_merged_logits_equal_base_plus_adapter_on_every_token_and_word(llama, tiny_llama):
    ids, mask = batch(tiny_llama)
    with torch.no_grad():
        plain = llama(input_ids=ids, attention_mask=mask).logits
        peft_model = adapted(llama)
        with_adapter = peft_model(input_ids=ids, attention_mask=mask).logits
        merged = peft_model.merge_and_unload(safe_merge=True)
        after = merged(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (with_adapter - plain)[real].abs().max() > 1e-2  # the adapter changes the model...
    assert (after - with_adapter)[real].abs().max() < 1e-5  # ...and merging keeps that change exactly
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_safe_merge_refuses_an_injected_nan(llama):
    peft_model = adapted(llama)
    with torch.no_grad():
        next(p for n, p in peft_model.named_parameters() if "lora_B" in n)[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        peft_model.merge_and_unload(safe_merge=True)


def block_inputs(model, ids, mask, iv=None):
    """The hidden states entering every block (= the output of the block before it)."""
    layers = transformer_layers(model)
    seen = {}
    hooks = [layer.register_forward_pre_hook(
        lambda m, args, kwargs, i=i: seen.__setitem__(
            i, (args[0] if args else kwargs["hidden_states"]).clone()),
        with_kwargs=True) for i, layer in enumerate(layers)]
    with torch.no_grad():
        if iv:
            with iv.attached(layers):
                iv.set_batch(prompts_of(mask))
                out = model(input_ids=ids, attention_mask=mask).logits
        else:
            out = model(input_ids=ids, attention_mask=mask).logits
    for h in hooks:
        h.remove()
    return seen, out


def test_intervention_acts_at_its_layer_and_positions_only(llama, tiny_llama):
    ids, mask = batch(tiny_llama)
    torch.manual_seed(0)
    iv = Intervention(LoReFT(32, 4), layer=1, positions="f1+l1")
    with torch.no_grad():
        iv.loreft.learned_source.bias.fill_(1.0)
    plain, plain_logits = block_inputs(llama, ids, mask)
    moved, logits = block_inputs(llama, ids, mask, iv)
    layers = transformer_layers(llama)
    assert not layers[1]._forward_hooks  # detached after use
    assert torch.equal(moved[0], plain[0]) and torch.equal(moved[1], plain[1])  # blocks 0 and 1 see no change
    delta = (moved[2] - plain[2]).abs().amax(-1)  # the output of block 1, per token
    lengths = mask.sum(1)
    for row, n in enumerate(lengths.tolist()):
        assert set((delta[row] > 1e-6).nonzero().flatten().tolist()) == {0, n - 1}
    assert (logits - plain_logits)[mask.bool()].abs().max() > 1e-3  # and it moves the output


def test_reloaded_intervention_keeps_layer_positions_and_outputs(llama, tiny_llama, tmp_path):
    ids, mask = batch(tiny_llama)
    torch.manual_seed(0)
    iv = Intervention(LoReFT(32, 4), layer=2, positions="l2")
    with torch.no_grad():
        iv.loreft.learned_source.bias.normal_()
    iv.save(tmp_path)
    loaded = Intervention.load(tmp_path)
    assert (loaded.layer, loaded.positions, loaded.first_n, loaded.last_n) == (2, "l2", 0, 2)
    (_, a), (seen, b) = block_inputs(llama, ids, mask, iv), block_inputs(llama, ids, mask, loaded)
    plain, plain_logits = block_inputs(llama, ids, mask)
    assert torch.equal(a, b)  # the same outputs after the reload
    assert all(torch.equal(seen[i], plain[i]) for i in range(3))  # nothing before block 2's output moved
    assert (a - plain_logits).abs().max() > 1e-3
