"""No host reads per training step: the loop reads the device only when progress is due.

On a GPU each read of a device tensor on the host (``loss.item()``, ``if torch.isfinite(loss)``,
``.tolist()``, ``.cpu()``, transformers' ``padding_mask.all()``) waits for the queued kernels;
one per step leaves the GPU idle while Python prepares the next.  ``HostReads``
(heft/modeling/host_reads.py) counts them on the CPU: the model's parameters and each batch after
``to_device`` count as device tensors, and so does everything computed from them.

The rule: an epoch of S optimizer steps reads at most ceil(S/N) + 1 times, N the progress
interval (``Progress.every``, or S // 5 in short epochs when a step callback listens: at least 5
points per epoch), i.e. at each report and at the end of the epoch; a scoring pass reads once, at
its end.
The code before issue 38 read 4-4.5 times per step (89 and 80 reads in 20 steps)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from heft.config import LoraConfig, ReftConfig
from heft.data.batching import CPU_KEYS, Encoded
from heft.modeling import models, scoring, training
from heft.modeling.host_reads import HostReads
from heft.modeling.loreft import Intervention, LoReFT
from heft.modeling.sequences import lm_loss
from heft.modeling.training import Objective, train
from heft.progress import Progress

ROWS, BATCH, EVERY = 80, 4, 10   # 20 steps per epoch
ANSWERS = (5, 6)


def rows(seed: int = 0, with_prompts: bool = False) -> Encoded:
    rng = random.Random(seed)
    ids = [[2] + [rng.randrange(5, 30) for _ in range(rng.randrange(3, 20))] for _ in range(ROWS)]
    plens = [max(1, len(x) - 2) for x in ids] if with_prompts else None
    return Encoded(ids, None, [rng.randrange(2) for _ in range(ROWS)], plens, list(range(ROWS)))


def counted(monkeypatch, module, tensors) -> HostReads:
    """A HostReads over ``tensors``, with ``module.to_device`` marking every batch it copies."""
    reads = HostReads(tensors)
    real = module.to_device

    def to_device(batch, device):
        out = real({k: v if k in CPU_KEYS else v.clone() for k, v in batch.items()}, device)
        reads.mark([v for k, v in out.items() if k not in CPU_KEYS])
        return out
    monkeypatch.setattr(module, "to_device", to_device)
    return reads


def model_of(folder, family):
    model = models.load_model(str(folder), family)
    model.requires_grad_(False)
    return model


def check_epoch(monkeypatch, model, groups, objective, cfg, intervention=None):
    reads = counted(monkeypatch, training, [*model.parameters(), *model.buffers(),
                                            *(p for g in groups for p in g["params"])])
    with reads:
        train(model, groups, objective, cfg, desc="t", intervention=intervention,
              progress=Progress(on_step=lambda step, metrics: None, every=EVERY))
    steps = math.ceil(ROWS / BATCH)
    allowed = math.ceil(steps / min(EVERY, max(1, steps // 5))) + 1
    assert reads.count <= allowed, f"{reads.count} host reads in {steps} steps (allowed {allowed}): " \
                                   f"{dict(reads.where)}"


def test_a_lora_epoch_reads_the_device_only_at_progress(monkeypatch, tiny_llama):
    from peft import LoraConfig as PeftLoraConfig, TaskType, get_peft_model
    model = get_peft_model(model_of(tiny_llama, "causal-lm"), PeftLoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], task_type=TaskType.CAUSAL_LM))
    params = [p for p in model.parameters() if p.requires_grad]
    objective = Objective(rows(), models.label_loss("causal-lm", "cls", ANSWERS), lambda m: None, 0)
    check_epoch(monkeypatch, model, [{"params": params}], objective, LoraConfig(epochs=1, batch_size=BATCH))


@pytest.mark.parametrize("family", ["causal-lm", "seq-cls"])
def test_a_reft_epoch_reads_the_device_only_at_progress(monkeypatch, tiny_llama, tiny_bert, family):
    model = model_of(tiny_llama if family == "causal-lm" else tiny_bert, family)
    iv = Intervention(LoReFT(32, 4), layer=1, positions="f1+l1")
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    for p in head:
        p.requires_grad_(True)
    loss = models.label_loss(family, "mean", ANSWERS if family == "causal-lm" else None)
    objective = Objective(rows(), loss, lambda m: None, 0)
    check_epoch(monkeypatch, model, [{"params": [*iv.loreft.parameters(), *head]}], objective,
                ReftConfig(epochs=1, batch_size=BATCH, layer=1), iv)


def test_a_sequence_task_epoch_reads_the_device_only_at_progress(monkeypatch, tiny_llama):
    model = model_of(tiny_llama, "causal-lm")
    iv = Intervention(LoReFT(32, 4), layer=1, positions="l1")
    objective = Objective(rows(with_prompts=True), lm_loss, lambda m: None, 0)
    check_epoch(monkeypatch, model, [{"params": list(iv.loreft.parameters())}], objective,
                ReftConfig(epochs=1, batch_size=BATCH, layer=1), iv)


@pytest.mark.parametrize("family", ["causal-lm", "seq-cls"])
def test_scoring_reads_the_device_once_per_pass(monkeypatch, tiny_llama, tiny_bert, family):
    model = model_of(tiny_llama if family == "causal-lm" else tiny_bert, family).eval()
    iv = Intervention(LoReFT(32, 4).eval(), layer=1, positions="f1+l1")
    reads = counted(monkeypatch, scoring, [*model.parameters(), *model.buffers(), *iv.loreft.parameters()])
    with reads:
        scoring.predict(model, rows(), 8, family=family, pooling="mean", pad_id=0, intervention=iv,
                        answer_ids=ANSWERS if family == "causal-lm" else None)
        if family == "causal-lm":
            scoring.score_choices(model, rows(with_prompts=True), ROWS, 8, pad_id=0, intervention=iv)
    passes = 2 if family == "causal-lm" else 1
    assert reads.count <= passes, f"{reads.count} host reads in {passes} scoring passes: {dict(reads.where)}"


def test_the_counter_sees_the_reads_it_is_meant_to_count():
    """What the tests above rely on: reads of device tensors (and of tensors computed from them)
    are counted, reads of host tensors are not."""
    w = torch.ones(3)
    with HostReads([w]) as reads:
        x = (w * 2).sum()
        x.item()
        bool(torch.isfinite(x))
        (w > 0).tolist()
        w[w > 0]
        torch.ones(2).tolist()   # a host tensor: not counted
    assert reads.count == 4, dict(reads.where)
