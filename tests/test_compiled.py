"""The optional compiled path (``lora.compile`` / ``reft.compile``, heft/modeling/compiled.py):
the blocks through torch.compile and batch widths bucketed to multiples of 64 train the same
weights as the plain path, up to rounding.  The default tier traces with aot_eager (the graphs
torch.compile captures, without generating code); the slow tier compiles with inductor."""
from __future__ import annotations

import random

import pytest
import torch

from heft.config import LoraConfig, ReftConfig
from heft.data.batching import Encoded, collate
from heft.modeling import models
from heft.modeling.compiled import BUCKET
from heft.modeling.loreft import Intervention, LoReFT
from heft.modeling.prefix import PrefixCache
from heft.modeling.training import Objective, train

ANSWERS = (5, 6)


def rows(n: int = 48) -> Encoded:
    rng = random.Random(2)
    ids = [[2] + [rng.randrange(5, 30) for _ in range(rng.randrange(3, 20))] for _ in range(n)]
    return Encoded(ids, None, [rng.randrange(2) for _ in range(n)])


def lora_run(folder, compiled: bool) -> dict[str, torch.Tensor]:
    from peft import LoraConfig as PeftLoraConfig, TaskType, get_peft_model
    model = models.load_model(str(folder), "causal-lm")
    torch.manual_seed(0)
    model = get_peft_model(model, PeftLoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                                 task_type=TaskType.CAUSAL_LM))
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    objective = Objective(rows(), models.label_loss("causal-lm", "cls", ANSWERS), lambda m: None, 0)
    train(model, [{"params": list(named.values())}], objective,
          LoraConfig(epochs=2, batch_size=16, lr=1e-2, compile=compiled), desc="lora")
    return {n: p.detach().clone() for n, p in named.items()}


def reft_run(folder, compiled: bool) -> dict[str, torch.Tensor]:
    model = models.load_model(str(folder), "causal-lm")
    model.requires_grad_(False)
    torch.manual_seed(0)
    iv = Intervention(LoReFT(32, 4), layer=0, positions="f1+l1")
    iv.prefix = PrefixCache(model, 0)
    iv.prefix.fill(rows(), pad_id=0)
    objective = Objective(rows(), models.label_loss("causal-lm", "cls", ANSWERS), lambda m: None, 0)
    train(model, [{"params": list(iv.loreft.parameters())}], objective,
          ReftConfig(epochs=2, batch_size=16, lr=1e-2, layer=0, compile=compiled), desc="reft",
          intervention=iv)
    assert iv.prefix.hits == 6   # the cache served every step, compiled blocks above it
    return {n: p.detach().clone() for n, p in iv.loreft.state_dict().items()}


def check(run, folder):
    from torch._dynamo.utils import counters
    counters.clear()
    plain, compiled = run(folder, False), run(folder, True)
    assert counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    for name in plain:
        torch.testing.assert_close(compiled[name], plain[name], rtol=1e-4, atol=1e-5)
    assert any((plain[n] != 0).any() for n in plain)


def test_batches_are_padded_to_the_bucket():
    batch = collate(rows(), [0, 1, 2], pad_id=0, multiple=BUCKET)
    assert batch["input_ids"].shape[1] == BUCKET and batch["length"].max() < BUCKET


@pytest.mark.parametrize("run", [lora_run, reft_run], ids=["lora", "reft"])
def test_the_compiled_path_trains_the_same_weights(run, tiny_llama, monkeypatch):
    monkeypatch.setenv("HEFT_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    check(run, tiny_llama)


@pytest.mark.slow
@pytest.mark.parametrize("run", [lora_run, reft_run], ids=["lora", "reft"])
def test_the_inductor_compiled_path_trains_the_same_weights(run, tiny_llama, monkeypatch):
    monkeypatch.setenv("HEFT_COMPILE_BACKEND", "inductor")
    torch._dynamo.reset()
    check(run, tiny_llama)
