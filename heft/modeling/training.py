"""One training loop for both stages, readable top to bottom.

What differs between LoRA and ReFT is only *which* parameters require grad and
whether an intervention hook is attached; the schedule and bookkeeping are shared.  What is
minimised comes from the task (``objective``): a label task's answer-token or head
cross-entropy, a choice or generate task's LM loss on the continuation tokens
(heft/modeling/sequences.py); validation reads the task's own accuracy
(heft/modeling/answering.py).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from heft import memory
from heft.config import TrainConfig
from heft.data.batching import Encoded, collate, to_device, train_batches
from heft.modeling import models
from heft.modeling.compiled import BUCKET, compiled_blocks
from heft.modeling.loreft import Intervention
from heft.modeling.precision import adapters_follow_autocast, autocast
from heft.progress import Progress, check_stop
from heft.store.checkpoints import EpochCheckpoints

log = logging.getLogger(__name__)


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """LR factor of step s.  linear: warm-up over warmup_ratio of *all* steps, then linear
    decay to 0 at the last step.  constant: warm-up over warmup_ratio of the *first epoch's*
    steps, then flat, so the factor of step s never depends on cfg.epochs and a longer run
    can continue from a shorter run's checkpoint (heft/store/checkpoints.py)."""
    total_steps = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_ratio * (steps_per_epoch if cfg.schedule == "constant" else total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return factor


@dataclass
class Objective:
    """What a stage trains on: the encoded training sequences, the loss of a (device) batch,
    and the validation accuracy of the model (None: no validation rows)."""
    train: Encoded
    loss: Callable[[object, dict], torch.Tensor]
    validate: Callable[[object], float | None]
    pad_id: int
    precision: str = "off"


class LossTally:
    """An epoch's running loss and its finiteness check, kept on the device.

    ``add`` queues a few scalar kernels and reads nothing back: on a GPU a read (``loss.item()``,
    ``if torch.isfinite(loss)``) waits for every queued kernel, so a read per step leaves the GPU
    idle while Python prepares the next one.  ``read`` brings everything to the host in one copy;
    the loop calls it every few steps (when progress is due) and at the end of each epoch.  The
    sum is float64 on the device, as the host used to sum ``loss.item() * rows``: the same numbers,
    added in the same order.  The first non-finite loss is remembered with its step, so the stop
    names the exact step although it is noticed a few steps later."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float64, device=device)
        self.last = self.total
        self.rows = 0

    def add(self, loss: torch.Tensor, rows: int, step: int) -> None:
        loss = loss.detach().double()
        self.total += loss * rows
        fresh = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(fresh, step, self.first_bad)
        self.bad_value = torch.where(fresh, loss, self.bad_value)
        self.last, self.rows = loss, self.rows + rows

    def read(self) -> tuple[float, int, float, float]:
        """(mean loss so far, the step of the first non-finite loss or -1, its value, the last
        step's loss): the one host read."""
        total, first_bad, bad, last = torch.stack([self.total, self.first_bad.double(), self.bad_value,
                                                   self.last]).tolist()
        return total / max(1, self.rows), int(first_bad), bad, last


def compilable(model, intervention: Intervention | None) -> list:
    """The blocks the compiled path compiles: all but the intervention's own (its hook reads
    per-batch positions) and, with a prefix cache, the blocks below it (their ``forward`` is
    replaced by the cache)."""
    if intervention is None:
        return list(models.transformer_layers(model))
    layers = models.transformer_layers(model)
    return [b for i, b in enumerate(layers)
            if i > intervention.layer or (i < intervention.layer and intervention.prefix is None)]


def train(model, groups: list[dict], objective: Objective, cfg: TrainConfig, *, desc: str,
          intervention: Intervention | None = None, progress: Progress | None = None,
          checkpoints: EpochCheckpoints | None = None,
          state: dict[str, torch.Tensor] | None = None) -> tuple[list[dict], int]:
    """Train the parameters in ``groups`` for cfg.epochs; return (one metrics dict per
    epoch, the epoch training resumed after).

    With ``checkpoints``, the live tensors in ``state`` (trainable parameters and their
    buffers) plus optimizer, scheduler and RNG are saved after every epoch, and training
    starts after the latest checkpoint of the same trajectory (the history of the restored
    epochs is returned, and replayed to ``progress``, as if they had just run).

    Host reads: none per step.  The loss stays on the device (``LossTally``) and is read when
    ``progress`` is due (every ``progress.every`` optimizer steps, more often in short epochs) and
    at the end of each epoch; a non-finite loss stops the stage there, naming its epoch and step,
    before the epoch's checkpoint is written."""
    progress = progress or Progress()
    torch.manual_seed(cfg.seed)
    params = [p for g in groups for p in g["params"]]
    # weight_decay=0: the LoReFT rotation must not be decayed (see heft/modeling/loreft.py), and
    # LoRA adapters are tiny and start at B=0, where decay only fights the update.  On CUDA the
    # fused kernel updates every tensor in one launch (the default launches a few per tensor).
    fused = True if params and all(p.is_cuda for p in params) else None
    # groups may set their own lr
    optimizer = torch.optim.AdamW(groups, fused=fused, lr=cfg.lr, weight_decay=0.0)
    train_enc, precision = objective.train, objective.precision
    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
    layers = models.transformer_layers(model) if intervention else None
    history, resumed = [], 0
    if checkpoints:
        resumed, history = checkpoints.restore_latest(cfg.epochs, state, optimizer, scheduler)
        history = history[:resumed]
    if resumed:
        for epoch, metrics in enumerate(history, start=1):  # replayed: complete curves in MLflow
            progress.epoch(epoch, metrics)
    dev = next(model.parameters()).device
    # widths padded up to a multiple repeat: compiled graphs are reused, freed blocks refit
    multiple = cfg.width_multiple if cfg.width_multiple > 1 else BUCKET if cfg.compile else 1
    progress.start(resumed * steps_per_epoch)
    with intervention.attached(layers) if intervention else nullcontext(), \
            adapters_follow_autocast(model, precision):
        for epoch in range(resumed + 1, cfg.epochs + 1):
            model.train()
            start, tally = time.perf_counter(), LossTally(dev)
            batches = train_batches(train_enc, cfg.batch_size, cfg.seed, epoch)
            # disable=None: a bar on a terminal; in log files and CI none, and the progress's
            # step lines instead (every N steps and at least once a minute, heft/progress.py)
            bar = tqdm(batches, desc=f"{progress.label or desc} epoch {epoch}/{cfg.epochs}", unit="batch",
                       leave=False,
                       disable=None)
            mean = math.nan
            with compiled_blocks(compilable(model, intervention), cfg.compile):  # the steps, not validation
                for step, idx in enumerate(bar):
                    check_stop()  # an interrupt stops the stage at the next step (a flag: no host read)
                    batch = collate(train_enc, idx, objective.pad_id, multiple=multiple)
                    if intervention:
                        intervention.set_batch(batch)  # on the prompt positions, read on the host
                    with autocast(precision, dev.type):  # bf16 matmuls; parameters and grads stay float32
                        loss = objective.loss(model, to_device(batch, dev))  # float32
                    tally.add(loss, len(idx), step)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    scheduler.step()
                    # the step axis counts optimizer steps from the stage's start (resumed runs continue it)
                    global_step = (epoch - 1) * steps_per_epoch + step + 1
                    if progress.due(global_step, steps_per_epoch) or step == len(batches) - 1:
                        mean, bad_step, bad, last = tally.read()
                        if bad_step >= 0:
                            raise FloatingPointError(
                                f"{desc}: loss is {bad} at epoch {epoch} step {bad_step}")
                        bar.set_postfix(loss=f"{mean:.4f}")
                        lr = scheduler.get_last_lr()[0]
                        progress.step(global_step, {"train_loss_step": last, "learning_rate": lr,
                                                    "train_loss_epoch": mean}, steps_per_epoch, cfg.epochs)
            seconds = time.perf_counter() - start
            seen = tally.rows
            metrics = {"train_loss": mean, "epoch_seconds": seconds,
                       "train_examples_per_second": seen / seconds,
                       "optimizer_steps": epoch * steps_per_epoch}
            # the epoch's freed activations go back to the system first: validation's batches
            # (64 rows) do not fit the holes the training steps (16 rows) left in glibc's heap,
            # so without the trim they are stacked on top of them (the demo peaked at each
            # epoch's validation, docs/benchmarks.md section 15); milliseconds, no number changes
            memory.trim()
            valid = objective.validate(model)
            if valid is not None:
                metrics["valid_accuracy"] = valid
            history.append(metrics)
            valid = metrics.get("valid_accuracy")
            log.info("%s epoch %d/%d: train loss %.4f%s (%.0f s)", desc, epoch, cfg.epochs,
                     metrics["train_loss"], f", validation accuracy {valid:.2%}" if valid is not None else "",
                     seconds)
            if checkpoints:
                checkpoints.save(epoch, state, optimizer, scheduler, history)
            progress.epoch(epoch, metrics)
    model.eval()
    return history, resumed
