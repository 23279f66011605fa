"""A stage keeps nothing alive after it returns, and its freed pages are handed back
(heft/memory.py): the models a stage loads are gone when ``run_step`` returns, with Python's
automatic garbage collection off (so only what the stage runner does counts), and the runner
gives the heap back after every stage it built, not after a stage found in the store."""
from __future__ import annotations

import gc
import weakref

import pytest

from heft import memory
from heft.config import LoraConfig, ReftConfig
from heft.modeling import models
from heft.plan import plan
from heft.stages import run_step
from heft.store.artifacts import ArtifactStore


@pytest.fixture
def no_automatic_gc():
    was = gc.isenabled()
    gc.disable()
    yield
    if was:
        gc.enable()


def test_stages_keep_no_model_alive(tiny_config, tmp_path, monkeypatch, no_automatic_gc):
    loaded, trims = [], []
    real_load = models.load_model

    def load_model(*args, **kwargs):
        model = real_load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model
    monkeypatch.setattr(models, "load_model", load_model)
    # the runner's release (its gc.collect not run: the models must die by reference counting)
    monkeypatch.setattr(memory, "release", lambda: trims.append(1))
    cfg = tiny_config(tmp_path / "art", lora=LoraConfig(epochs=1, lr=1e-2),
                      reft=ReftConfig(epochs=1, lr=1e-2, layer=1))
    store, done = ArtifactStore(cfg.artifact_root), {}
    steps = plan(cfg).steps
    for step in steps:
        before = len(trims)
        done[step.key] = run_step(step, done.get(step.parent_key), store)
        assert len(trims) == before + 1, f"{step.label}: the heap was not given back after it built"
        alive = [ref() for ref in loaded if ref() is not None]
        assert not alive, f"{step.label} left model(s) alive: {[type(m).__name__ for m in alive]}"
    assert sum(s.stage in ("lora", "merge", "reft", "evaluate") for s in steps) <= len(loaded)
    trims.clear()
    for step in steps:  # found in the store: nothing built, nothing to give back
        run_step(step, done.get(step.parent_key), store)
    assert trims == []


def test_trim_is_safe_to_call():
    assert memory.trim() in (True, False)
    memory.release()


def test_scoring_runs_the_widest_batch_first_with_the_same_rows_per_batch(tiny_llama, monkeypatch):
    """Evaluation's batches go widest first (heft/data/batching.py eval_batches: narrower
    batches then fit the blocks the wider ones freed, instead of growing the CPU heap), and each
    batch holds the rows it held in ascending length order, so not a score changes."""
    import random

    from heft.data.batching import Encoded
    from heft.modeling import scoring
    rng = random.Random(0)
    ids = [[2] + [rng.randrange(5, 30) for _ in range(rng.randrange(3, 40))] for _ in range(50)]
    enc = Encoded(ids, None, [0] * 50, None, list(range(50)))
    model = models.load_model(str(tiny_llama), "causal-lm").eval()
    batches, widths = [], []
    real_collate = scoring.collate
    monkeypatch.setattr(scoring, "collate",
                        lambda enc, idx, pad: batches.append(list(idx)) or real_collate(enc, idx, pad))
    hook = model.get_input_embeddings().register_forward_hook(
        lambda m, args, out: widths.append(args[0].shape[1]))
    try:
        scoring.predict(model, enc, 8, family="causal-lm", pooling="mean", pad_id=0, answer_ids=(5, 6))
    finally:
        hook.remove()
    assert widths[0] == max(map(len, ids)) and widths == sorted(widths, reverse=True), widths
    ascending = sorted(range(50), key=lambda i: len(ids[i]))
    assert batches == [ascending[j:j + 8] for j in range(0, 50, 8)][::-1]


def test_training_gives_the_epochs_freed_pages_back_before_each_validation(tiny_llama, monkeypatch):
    """Validation's wider batches do not fit the holes the training steps left in the CPU heap,
    so ``train`` trims the heap before each epoch's validation (the demo's peak was set there)."""
    import random

    from peft import LoraConfig as PeftLoraConfig, TaskType, get_peft_model

    from heft.data.batching import Encoded
    from heft.modeling import training
    events = []
    monkeypatch.setattr(memory, "trim", lambda: events.append("trim") or True)
    rng = random.Random(0)
    ids = [[2] + [rng.randrange(5, 30) for _ in range(rng.randrange(3, 20))] for _ in range(24)]
    enc = Encoded(ids, None, [rng.randrange(2) for _ in ids], None, list(range(24)))
    model = get_peft_model(models.load_model(str(tiny_llama), "causal-lm"), PeftLoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], task_type=TaskType.CAUSAL_LM))
    objective = training.Objective(enc, models.label_loss("causal-lm", "cls", (5, 6)),
                                   lambda m: events.append("validate") or 0.5, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    training.train(model, [{"params": params}], objective, LoraConfig(epochs=2, batch_size=8), desc="t")
    assert events == ["trim", "validate", "trim", "validate"], events
