"""ReFT's prefix cache (heft/modeling/prefix.py): a step served from the cache gives the plain
step's loss and gradients; the cache is refused while dropout is on in the frozen blocks (it would
be wrong there); the ReFT stage trains the same intervention with and without it."""
from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from heft.config import ReftConfig
from heft.data.batching import Encoded, collate, to_device
from heft.modeling import models
from heft.modeling.loreft import Intervention, LoReFT
from heft.modeling.prefix import PrefixCache, kept_in_eval, prefix_modules
from heft.run.execute import run_pipeline
from heft.store.artifacts import ArtifactStore

ANSWERS = (5, 6)
SETUPS = {"causal-lm": 1, "seq-cls": 0}   # family -> intervention layer (tiny Llama 3 blocks, tiny BERT 2)


def sequences(family: str, n: int = 24) -> Encoded:
    rng = random.Random(1)
    ids = [[2] + [rng.randrange(5, 30) for _ in range(rng.randrange(3, 24))] for _ in range(n)]
    types = [[int(t > len(x) // 2) for t in range(len(x))] for x in ids] if family == "seq-cls" else None
    return Encoded(ids, types, [rng.randrange(2) for _ in range(n)])


def setup(family, folder):
    model = models.load_model(str(folder), family)
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier"))
    torch.manual_seed(0)
    iv = Intervention(LoReFT(32, 4), layer=SETUPS[family], positions="f1+l1")
    return model, iv


def step(model, iv, family, batch, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training forward and backward in train mode: (loss, gradients of the trained tensors)."""
    model.train()
    model.zero_grad(set_to_none=True)
    iv.loreft.zero_grad(set_to_none=True)
    trained = [*iv.loreft.parameters(), *(p for p in model.parameters() if p.requires_grad)]
    loss_of = models.label_loss(family, "mean", ANSWERS if family == "causal-lm" else None)
    with iv.attached(models.transformer_layers(model)):
        iv.set_batch(batch)
        torch.manual_seed(seed)   # the same dropout masks above the layer
        loss = loss_of(model, to_device(batch, torch.device("cpu")))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trained]


@pytest.fixture(params=sorted(SETUPS))
def family_model(request, tiny_llama, tiny_bert):
    family = request.param
    return family, *setup(family, tiny_llama if family == "causal-lm" else tiny_bert)


def test_a_cached_step_gives_the_plain_steps_loss_and_gradients(family_model):
    family, model, iv = family_model
    enc = sequences(family)
    batch = collate(enc, [3, 7, 1, 12, 20, 5], pad_id=0)   # mixed lengths: padding at batch time
    with kept_in_eval(prefix_modules(model, iv.layer)):      # the prefix without dropout (BERT)
        plain_loss, plain_grads = step(model, iv, family, batch, seed=7)
        cache = PrefixCache(model, iv.layer)
        cache.fill(enc, pad_id=0)
        iv.prefix = cache
        cached_loss, cached_grads = step(model, iv, family, batch, seed=7)
    assert cache.hits == 1 and cache.misses == 0
    torch.testing.assert_close(cached_loss, plain_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(cached_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in cached_grads)     # the comparison is not of zeros
    # generation must not skip blocks (its prefill fills every block's KV cache)
    with iv.attached(models.transformer_layers(model)):
        iv.set_batch(batch, reuse_prefix=False)
        assert cache._current is None


def test_the_cache_serves_only_rows_it_holds(family_model):
    family, model, iv = family_model
    enc = sequences(family)
    cache = PrefixCache(model, iv.layer)
    cache.fill(Encoded(enc.input_ids[:10], enc.token_type_ids[:10] if enc.token_type_ids else None,
                       enc.labels[:10]), pad_id=0)
    model.eval()
    cache.select(collate(enc, [1, 2], pad_id=0))
    assert cache._current is not None
    cache.select(collate(enc, [1, 15], pad_id=0))            # row 15 was never computed
    assert cache._current is None and cache.misses == 1


def test_the_cache_is_refused_while_dropout_is_on_in_the_frozen_blocks(tiny_bert):
    """BERT in train mode has dropout in every block: a cached prefix would freeze one draw of it.
    The cache refuses (the step runs every block); forced, it would give another loss."""
    model, iv = setup("seq-cls", tiny_bert)
    enc = sequences("seq-cls")
    batch = collate(enc, [3, 7, 1, 12], pad_id=0)
    cache = PrefixCache(model, iv.layer)
    cache.fill(enc, pad_id=0)
    assert cache.random, "the tiny BERT has dropout in its prefix"
    plain_loss, _ = step(model, iv, "seq-cls", batch, seed=3)
    iv.prefix = cache
    refused_loss, _ = step(model, iv, "seq-cls", batch, seed=3)
    assert cache.hits == 0 and refused_loss == plain_loss
    cache.deterministic = lambda: True                       # what the refusal prevents
    forced_loss, _ = step(model, iv, "seq-cls", batch, seed=3)
    assert cache.hits == 1 and abs(float(forced_loss - plain_loss)) > 1e-4


@pytest.mark.parametrize("family", ["causal-lm", "seq-cls"])
def test_the_reft_stage_trains_the_same_intervention_with_and_without_the_cache(
        family, tiny_llama, tiny_bert, keyword_data, tmp_path):
    from conftest import keyword_builder
    folder = tiny_llama if family == "causal-lm" else tiny_bert
    build = keyword_builder(str(folder), 32, {}, {},
                            dict(source=str(keyword_data), holdout_size=60, valid_size=40, max_train=96))
    out = {}
    for cached in (True, False):
        # BERT: the prefix kept in eval mode, so the cache serves training steps too
        reft = ReftConfig(epochs=2, lr=1e-2, layer=SETUPS[family], batch_size=16, prefix_cache=cached,
                          prefix_dropout=family == "causal-lm")
        cfg = build(tmp_path / str(cached), mode="reft-only", reft=reft, model={"autocast": "off"})
        result = run_pipeline(cfg)
        store = ArtifactStore(cfg.artifact_root)
        out[cached] = (result["reft"].metrics, result["eval:reft"].metrics,
                       load_file(str(store.local_path(result["reft"]) / "intervention.safetensors")))
    (m_cached, e_cached, w_cached), (m_plain, e_plain, w_plain) = out[True], out[False]
    assert m_cached["prefix_cache_mb"] > 0 and "prefix_cache_mb" not in m_plain
    # every training step of both epochs (and the validation passes) skipped the prefix
    assert m_cached["prefix_cache_batches"] > m_cached["final_optimizer_steps"]
    for name in w_plain:
        torch.testing.assert_close(w_cached[name], w_plain[name], rtol=1e-4, atol=1e-5)
    assert m_cached["final_valid_accuracy"] == m_plain["final_valid_accuracy"]
    assert e_cached["accuracy"] == e_plain["accuracy"]
    assert m_cached["final_train_loss"] == pytest.approx(m_plain["final_train_loss"], rel=1e-5)
