"""bf16 compute for the LoRA adapters, float32 master weights (heft/modeling/precision.py): what a
CUDA run with bf16 weights and ``model.autocast=bfloat16`` does, checked on the CPU against the
float32 path: the adapters take their bf16 input as it comes (no cast up to float32 per adapted
projection), their parameters, gradients and AdamW updates stay float32, and loss, gradients and
one step's update agree with float32 to bf16's precision."""
from __future__ import annotations

import random

import torch

from heft.data.batching import Encoded, collate, to_device
from heft.modeling import models
from heft.modeling.precision import adapters_follow_autocast, autocast

ANSWERS = (5, 6)


def lora_model(folder, dtype: torch.dtype):
    from peft import LoraConfig, TaskType, get_peft_model
    model = models.load_model(str(folder), "causal-lm").to(dtype)
    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so the adapter moves the output from the start
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj"],
                                            task_type=TaskType.CAUSAL_LM))


def batch():
    rng = random.Random(0)
    enc = Encoded([[2] + [rng.randrange(5, 30) for _ in range(rng.randrange(4, 20))] for _ in range(8)], None,
                  [rng.randrange(2) for _ in range(8)])
    return to_device(collate(enc, list(range(8)), pad_id=0), torch.device("cpu"))


def step(model, precision: str, inputs: list) -> tuple[float, dict, dict]:
    """(loss, gradients, AdamW update of lr 2e-4) of one step, the adapters' inputs recorded."""
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trained.items()}
    optimizer = torch.optim.AdamW(trained.values(), lr=2e-4, weight_decay=0.0)
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].dtype))
             for n, m in model.named_modules() if n.endswith("lora_A.default")]
    with adapters_follow_autocast(model, precision), autocast(precision, "cpu"):
        loss = models.label_loss("causal-lm", "cls", ANSWERS)(model, batch())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trained.items()}
    optimizer.step()
    for h in hooks:
        h.remove()
    return float(loss.detach()), grads, {n: p.detach() - before[n] for n, p in trained.items()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_bf16_adapters_match_float32_and_keep_float32_master_weights(tiny_llama):
    full, mixed = lora_model(tiny_llama, torch.float32), lora_model(tiny_llama, torch.bfloat16)
    seen32, seen16 = [], []
    loss32, grads32, update32 = step(full, "off", seen32)
    loss16, grads16, update16 = step(mixed, "bfloat16", seen16)
    assert set(seen32) == {torch.float32} and set(seen16) == {torch.bfloat16}, (seen32, seen16)
    trained = {n: p for n, p in mixed.named_parameters() if p.requires_grad}
    assert trained and all(p.dtype == torch.float32 for p in trained.values())     # master weights
    assert all(g.dtype == torch.float32 for g in grads16.values())
    assert abs(loss16 - loss32) <= 2e-2 * abs(loss32)
    for name in grads32:
        assert relative(grads16[name], grads32[name]) < 5e-2, name
        # Adam's first step is about lr x sign(g) on every entry: bf16 storage (8 bits of mantissa)
        # would round such a 2e-4 step of a weight of ~0.1 away; the float32 master weights keep it,
        # in the direction the float32 path takes (signs may differ only where g is nearly 0)
        assert update16[name].abs().min() > 1e-4, name
        assert (update16[name].sign() == update32[name].sign()).float().mean() > 0.9, name
    # after the context the model casts again (a float32-weight run is left as it was)
    assert all(m.cast_input_dtype_enabled for m in mixed.modules() if hasattr(m, "cast_input_dtype_enabled"))
