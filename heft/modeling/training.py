"""One training loop for both stages, readable top to bottom.

What differs between LoRA and ReFT is only *which* parameters require grad and
whether an intervention hook is attached; the loss, schedule and bookkeeping are shared.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from typing import Callable

import torch
from tqdm.auto import tqdm

from heft.config import TrainConfig
from heft.data.batching import Encoded, collate, to_device, train_batches
from heft.modeling import models
from heft.modeling.loreft import Intervention
from heft.modeling.precision import autocast
from heft.modeling.scoring import predict
from heft.progress import Progress
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


def train(model, groups: list[dict], train_enc: Encoded, valid_enc: Encoded, cfg: TrainConfig, *,
          family: str, pooling: str, answer_ids, pad_id: int, desc: str,
          intervention: Intervention | None = None, progress: Progress | None = None,
          checkpoints: EpochCheckpoints | None = None,
          state: dict[str, torch.Tensor] | None = None, precision: str = "off") -> tuple[list[dict], int]:
    """Train the parameters in ``groups`` for cfg.epochs; return (one metrics dict per
    epoch, the epoch training resumed after).

    With ``checkpoints``, the live tensors in ``state`` (trainable parameters and their
    buffers) plus optimizer, scheduler and RNG are saved after every epoch, and training
    starts after the latest checkpoint of the same trajectory (the history of the restored
    epochs is returned, and replayed to ``progress``, as if they had just run)."""
    progress = progress or Progress()
    torch.manual_seed(cfg.seed)
    # weight_decay=0: the LoReFT rotation must not be decayed (see heft/modeling/loreft.py), and
    # LoRA adapters are tiny and start at B=0, where decay only fights the update.
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0)  # groups may set their own lr
    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
    params = [p for g in groups for p in g["params"]]
    layers = models.transformer_layers(model) if intervention else None
    history, resumed = [], 0
    if checkpoints:
        resumed, history = checkpoints.restore_latest(cfg.epochs, state, optimizer, scheduler)
        history = history[:resumed]
    if resumed:
        for epoch, metrics in enumerate(history, start=1):  # replayed: complete curves in MLflow
            progress.epoch(epoch, metrics)
    dev = next(model.parameters()).device
    progress.start(resumed * steps_per_epoch)
    with intervention.attached(layers) if intervention else nullcontext():
        for epoch in range(resumed + 1, cfg.epochs + 1):
            model.train()
            start, total_loss, seen = time.perf_counter(), 0.0, 0
            # disable=None: a bar on a terminal; in log files and CI none, and the progress's
            # step lines instead (every N steps and at least once a minute, heft/progress.py)
            bar = tqdm(train_batches(train_enc, cfg.batch_size, cfg.seed, epoch),
                       desc=f"{progress.label or desc} epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                       disable=None)
            for step, idx in enumerate(bar):
                batch = to_device(collate(train_enc, idx, pad_id), dev)
                if intervention:
                    intervention.set_batch(batch["attention_mask"])
                with autocast(precision, dev.type):  # bf16 matmuls; parameters and grads stay float32
                    scores, vocab_logits = models.class_scores(model, batch, family, pooling, answer_ids)
                loss = models.loss_fn(scores, vocab_logits, batch["labels"], answer_ids)  # float32
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss is {loss.item()} at epoch {epoch} step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                step_loss = loss.item()
                total_loss += step_loss * len(idx)
                seen += len(idx)
                bar.set_postfix(loss=f"{total_loss / seen:.4f}")
                # the step axis counts optimizer steps from the stage's start (resumed runs continue it)
                progress.step((epoch - 1) * steps_per_epoch + step + 1,
                              {"train_loss_step": step_loss, "learning_rate": scheduler.get_last_lr()[0],
                               "train_loss_epoch": total_loss / seen}, steps_per_epoch, cfg.epochs)
            seconds = time.perf_counter() - start
            metrics = {"train_loss": total_loss / seen, "epoch_seconds": seconds,
                       "train_examples_per_second": seen / seconds,
                       "optimizer_steps": epoch * steps_per_epoch}
            if len(valid_enc):
                preds = predict(model, valid_enc, 64, family=family, pooling=pooling,
                                answer_ids=answer_ids, pad_id=pad_id, intervention=intervention,
                                desc=f"{desc} valid", precision=precision)
                # a count over the rows, not a float32 mean: 247/400 is 0.6175, not 0.6175000071525574
                right = int((preds == torch.tensor(valid_enc.labels)).sum())
                metrics["valid_accuracy"] = right / len(valid_enc)
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
