"""Benchmark: heft's LoRA training loop vs. a bare torch + peft loop, side by side.

    .venv/bin/python bench/lora_overhead.py                        # embedded default (MiniLM), ~6 min
    .venv/bin/python bench/lora_overhead.py --preset deployments/stories-boolq.yaml --rows 640

Both loops train the same peft model (same LoRA config, same initial weights), on the
same length-grouped batches, with the same AdamW, LR schedule and gradient clipping;
the scoring function and loss are heft's (the numerics are not what is measured).
What differs is what heft adds around the step: the tqdm bar, the per-step finiteness
check (``loss.item()``, a sync), per-epoch checkpoints (tensors + optimizer + RNG,
published atomically) and per-epoch MLflow metric logging.  Runs alternate
bare/heft ``--reps`` times (this machine is noisy); reported: the median of the paired
heft/bare ratios, the ratio of the minima, and the spread of the bare runs (the noise floor).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import objective, prepare, ratios  # noqa: E402

from heft.modeling import models  # noqa: E402
from heft.data.batching import collate, to_device, train_batches  # noqa: E402
from heft.store.checkpoints import EpochCheckpoints  # noqa: E402
from heft.stages.inputs import StageInputs  # noqa: E402
from heft.tracking import Tracker  # noqa: E402
from heft.modeling.training import lr_lambda, train  # noqa: E402


def fresh_model(inputs: StageInputs, cfg):
    """The LoRA stage's model: base weights, head, peft adapter (as heft/stages/lora.py builds it)."""
    from peft import LoraConfig as PeftLoraConfig, TaskType, get_peft_model
    from heft.stages.lora import target_modules
    model = inputs.load_weights(cfg.seed)
    inputs.load_head(model)
    causal = inputs.family == "causal-lm"
    model = get_peft_model(model, PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=target_modules(cfg, model),
        task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return model, named


def bare_epoch(inputs, tok, enc, cfg, batches: list[list[int]] | None = None) -> float:
    """The loop a user would write by hand; returns seconds of the training loop.
    ``batches`` (index lists) default to heft's length-grouped ``train_batches``."""
    model, named = fresh_model(inputs, cfg)
    params = [p for _, p in named]
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, math.ceil(len(enc) / cfg.batch_size)))
    answer_ids, dev = inputs.answer_ids(tok), next(model.parameters()).device
    model.train()
    start = time.perf_counter()
    for idx in batches or train_batches(enc, cfg.batch_size, cfg.seed, 1):
        batch = to_device(collate(enc, idx, tok.pad_token_id), dev)
        scores, vocab = models.class_scores(model, batch, inputs.family, inputs.model_cfg.pooling, answer_ids)
        loss = models.loss_fn(scores, vocab, batch["labels"], answer_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return time.perf_counter() - start


def heft_epoch(inputs, tok, enc, empty, cfg, store, parent, tracker) -> float:
    """heft.training.train with its checkpoints and MLflow epoch logging; wall seconds."""
    model, named = fresh_model(inputs, cfg)
    start = time.perf_counter()
    train(model, [{"params": [p for _, p in named]}], objective(inputs, tok, enc), cfg,
          desc="lora", progress=tracker.progress(),
          checkpoints=EpochCheckpoints(store, "lora", cfg, parent.key), state=dict(named))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="deployments/minilm-boolq.yaml")
    ap.add_argument("--rows", type=int, default=320, help="training rows (one epoch each run)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    env = prepare(args.preset, [f"data.max_train={args.rows}", "data.valid_size=16", "lora.epochs=1"])
    cfg, store, base, inputs = env.cfg, env.store, env.base, env.inputs
    tok, enc, empty = env.tok, env.enc, env.empty
    lora = dataclasses.replace(cfg.lora, head_lr=0.0)  # one param group in both loops
    tracker = Tracker.start(f"sqlite:///{env.work}/mlflow.db", "bench", "lora-overhead", {})
    steps = math.ceil(len(enc) / lora.batch_size)
    tokens = sum(len(ids) for ids in enc.input_ids)
    print(f"{cfg.model.name}: {len(enc)} rows, {steps} steps of {lora.batch_size}, {tokens} tokens/epoch, "
          f"torch threads {torch.get_num_threads()}")
    bare, ours = [], []
    for rep in range(args.reps):
        bare.append(bare_epoch(inputs, tok, enc, lora))
        lora_rep = dataclasses.replace(lora, seed=lora.seed + rep + 1)  # fresh checkpoint trajectory
        ours.append(heft_epoch(inputs, tok, enc, empty, lora_rep, store, base, tracker))
        print(f"rep {rep + 1}: bare {bare[-1]:.2f} s, heft {ours[-1]:.2f} s")
    b, h = statistics.median(bare), statistics.median(ours)
    paired, minima = ratios(ours, bare)
    print(f"\nper step (median): bare {1000 * b / steps:.1f} ms, heft {1000 * h / steps:.1f} ms; "
          f"tokens/s bare {tokens / b:.0f}, heft {tokens / h:.0f}")
    print(f"heft / bare: median of paired ratios {paired:.3f}, of minima {minima:.3f} "
          f"(rep-to-rep spread of bare alone: {max(bare) / min(bare) - 1:.1%})")


if __name__ == "__main__":
    main()
