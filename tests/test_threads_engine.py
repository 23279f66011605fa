"""The threads engine of a grid (``workers=2``, Prefect's ThreadPoolTaskRunner) on the causal
path: two models loaded on two threads at once both come back whole; a step starts as soon as
its parent is done, so the ReFT-only branch trains beside LoRA instead of after it; a failed
step is reported once, with its cells, and what it held back is named."""
from __future__ import annotations

import threading

import pytest
import torch


@pytest.fixture
def transformers_state(monkeypatch):
    """Put back whatever transformers swaps process-wide while it loads, whatever the test did."""
    from transformers import PreTrainedModel
    from transformers.initialization import TORCH_INIT_FUNCTIONS
    monkeypatch.setattr(PreTrainedModel, "tie_weights", PreTrainedModel.tie_weights)
    for name in TORCH_INIT_FUNCTIONS:
        if hasattr(torch.nn.init, name):
            monkeypatch.setattr(torch.nn.init, name, getattr(torch.nn.init, name))
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


def test_two_threads_loading_at_once_both_get_the_whole_model(stories, transformers_state, monkeypatch):
    """Thread A is held inside from_pretrained's set-up (tie_weights swapped for a no-op) while
    thread B loads: without one load at a time, B's tied lm_head stays on the meta device
    ("Cannot copy out of meta tensor" at its first .to()), the race the grid hit at random."""
    from transformers import LlamaForCausalLM
    from heft.modeling import models
    reference = models.load_model(str(stories), "causal-lm").state_dict()
    inside, b_done = threading.Event(), threading.Event()
    init = LlamaForCausalLM.__init__

    def held_init(self, config, *args, **kwargs):
        if not inside.is_set():  # thread A: wait for B (at most 1 s: B may be waiting for A)
            inside.set()
            b_done.wait(timeout=1.0)
        init(self, config, *args, **kwargs)
    monkeypatch.setattr(LlamaForCausalLM, "__init__", held_init)
    got = {}

    def load(name: str) -> None:
        try:
            got[name] = models.load_model(str(stories), "causal-lm").to("cpu").state_dict()
        except Exception as e:  # noqa: BLE001 - the race's error is the finding
            got[name] = e
    a = threading.Thread(target=load, args=("a",))
    a.start()
    assert inside.wait(timeout=30)
    b = threading.Thread(target=load, args=("b",))
    b.start()
    b.join(timeout=60)
    b_done.set()
    a.join(timeout=60)
    for name in "ab":
        assert not isinstance(got[name], Exception), f"thread {name}: {got[name]!r}"
        assert got[name].keys() == reference.keys()
        assert all(torch.equal(got[name][k], reference[k]) for k in reference), f"thread {name}: other weights"
