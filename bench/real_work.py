"""Benchmark: heft's LoRA, ReFT and evaluation steps against a bare HF + peft loop, on work that
looks like real work: Llama shapes, BoolQ's real token lengths padded as heft pads them.

    python3 bench/real_work.py --out docs/gpu                # a GPU: 135m, 1b and 7b, ~5 min on an H100
    python3 bench/real_work.py --sizes 1b --workloads boolq --profile
    .venv/bin/python bench/real_work.py --device cpu --size tiny     # the rehearsal, runs anywhere

Models: built from a LlamaConfig with random weights (no hub), bf16 on a GPU (float32 on the
CPU): ``135m`` = SmolLM2-135M's shape, ``1b`` = TinyLlama-1.1B's, ``7b`` = Llama-2-7B's, ``tiny``
for rehearsals.  Random weights change nothing about the time a step takes.

Workloads: ``boolq`` rows take the prompt lengths of BoolQ's 4,946 training rows with passages
(bench/data/boolq_lengths.json: heft's passage prompt under SmolLM2's tokenizer, median 134, mean
147 tokens), cut to ``--max-length`` as heft cuts them, in heft's length-grouped batches
(``train_batches``, padded to each batch's longest row); ``full`` rows are all ``--max-length``
tokens (the case of docs/benchmarks.md section 9: no padding).

Cells, each on the same batches for heft and for the bare loop, in one run:
  * lora: heft's ``training.train`` on the peft model (LoRA r=8 on q/k/v/o, as heft/stages/lora.py;
    bf16 autocast: the adapters compute in bf16 from float32 master weights) against a bare loop:
    the peft model's own forward on left-padded batches with ``logits_to_keep=1`` (the answer
    position), cross-entropy, backward, clipping, fused AdamW, the schedule, the loss summed on the
    device and read once per epoch;
  * reft: heft's ``train`` with the LoReFT intervention at layer 15/32 of the depth, with its prefix
    cache (filled once, timed apart) and without, against a bare pyreft-style loop (a forward hook
    applying the same LoReFT at the first and last prompt token, every block every step);
  * eval: heft's ``scoring.predict`` against a bare no-grad loop (``logits_to_keep=1``, argmax kept
    on the device, read once).
Each cell runs an epoch of ``--steps`` steps to warm up, then ``--reps`` timed epochs of as many
steps, each between two CUDA events (perf_counter on the CPU); the median is reported.  Reported
per cell: ms per step, tokens/s (real and padded), TFLOP/s, MFU and peak memory; heft / bare per
stage; with ``--profile``, three profiled steps of heft's LoRA at the first size (the share of the
window the GPU is busy, the ten heaviest kernels, the host syncs per step).

FLOPs, counted from the shapes (N = parameters of the blocks' matmuls, embeddings and LM head
left out: the head runs at one position per row; L blocks, hidden size d; a row of n tokens):
  * forward: 2N per token for the matmuls, plus attention scores and values 4nLd per token (the
    full n x n square, as PaLM's appendix counts it: no halving for the causal mask);
  * backward: activation gradients only, 2N + 8nLd per token (the base is frozen: no weight
    gradients; LoRA's own are r/d of one and left out), times the share of the depth the
    gradient runs through: all of it for LoRA, (L-1-k)/L for ReFT at layer k;
  * so LoRA = 4N + 12nLd, ReFT = 2N + 4nLd + (L-1-k)/L (2N + 8nLd), evaluation = 2N + 4nLd per token.
Model FLOPs count the real tokens (n the row's length); padded FLOPs the padded shapes.  ReFT's
count is the plain step's, also for the prefix cache (which skips the forward below k): its
"MFU" then says how fast the stage is, not how busy the GPU is.  MFU = model FLOPs per second over
the device's dense bf16 peak (PEAKS, looked up by the device's name).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from heft.config import LoraConfig, ReftConfig  # noqa: E402
from heft.data.batching import CPU_KEYS, Encoded, collate, host_to_device, train_batches  # noqa: E402
from heft.modeling import models, scoring, training  # noqa: E402
from heft.modeling.host_reads import HostReads  # noqa: E402
from heft.modeling.loreft import Intervention, LoReFT  # noqa: E402
from heft.modeling.precision import autocast  # noqa: E402
from heft.modeling.prefix import PrefixCache  # noqa: E402
from heft.progress import Progress  # noqa: E402

SIZES = {  # LlamaConfig fields
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=32000),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}
# Dense bf16 tensor-core peaks, TFLOP/s without sparsity (NVIDIA data sheets: half the "with
# sparsity" figure).  Matched against torch.cuda.get_device_name in this order, so the PCIe and NVL
# cards are found before the SXM name they contain ("NVIDIA H100 80GB HBM3" is the SXM card).
PEAKS = (("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("H100", 989.5), ("H200 NVL", 835.5), ("H200", 989.5),
         ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0))
ANSWERS = (1, 2)        # the answer token ids: any two ids do for timing
LENGTHS = ROOT / "bench" / "data" / "boolq_lengths.json"


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAKS if key in name), None)


# -- the model, the rows, the batches -------------------------------------------------------------
def build(size: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**SIZES[size], max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    model.requires_grad_(False)
    return model.eval()


def block_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters()
               if ".layers." in n and p.dim() == 2 and "lora_" not in n)


def rows(workload: str, count: int, max_length: int, vocab: int, seed: int = 0) -> Encoded:
    rng = random.Random(seed)
    if workload == "full":
        lengths = [max_length] * count
    else:
        pool = json.loads(LENGTHS.read_text())["lengths"]
        lengths = [min(rng.choice(pool), max_length) for _ in range(count)]
    ids = [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]
    return Encoded(ids, None, [rng.randrange(2) for _ in range(count)])


def flops_per_row(n: int, stage: str, n_matmul: int, layers: int, d: int, layer: int) -> float:
    forward = 2 * n_matmul + 4 * n * layers * d
    backward = 2 * n_matmul + 8 * n * layers * d
    if stage == "lora":
        return n * (forward + backward)
    if stage == "reft":
        return n * (forward + (layers - 1 - layer) / layers * backward)
    return n * forward


def work(enc: Encoded, batches: list[list[int]], stage: str, shape: tuple) -> tuple[int, int, float, float]:
    """(real tokens, padded tokens, model FLOPs, padded FLOPs) of ``batches``."""
    tokens = padded = flops = padded_flops = 0
    for b in batches:
        lengths = [len(enc.input_ids[i]) for i in b]
        tokens, padded = tokens + sum(lengths), padded + len(b) * max(lengths)
        flops += sum(flops_per_row(n, stage, *shape) for n in lengths)
        padded_flops += len(b) * flops_per_row(max(lengths), stage, *shape)
    return tokens, padded, flops, padded_flops


# -- timing and syncs --------------------------------------------------------------------------
class Clock:
    """Elapsed ms between ``start`` and ``stop``: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self._a = torch.cuda.Event(enable_timing=True)
            self._a.record()
        else:
            self._t = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            b = torch.cuda.Event(enable_timing=True)
            b.record()
            b.synchronize()
            return self._a.elapsed_time(b)
        return 1000 * (time.perf_counter() - self._t)


@contextmanager
def syncs_counted(device: torch.device, model, out: dict):
    """Host syncs inside the block: torch's sync debug mode on CUDA, HostReads on the CPU (model
    parameters and batches after ``to_device`` count as device tensors)."""
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(0)
        out["syncs"] = sum("synchroniz" in str(w.message) for w in caught)
        return
    reads = HostReads([*model.parameters(), *model.buffers()])
    real = training.to_device

    def to_device(batch, dev):
        moved = real({k: v.clone() for k, v in batch.items()}, dev)
        reads.mark([v for k, v in moved.items() if k not in CPU_KEYS])
        return moved
    training.to_device = to_device
    try:
        with reads:
            yield
    finally:
        training.to_device = real
    out["syncs"] = reads.count


# -- heft's loops ------------------------------------------------------------------------------
def peft_wrap(model):
    from peft import LoraConfig as PeftLoraConfig, TaskType, get_peft_model
    torch.manual_seed(0)
    return get_peft_model(model, PeftLoraConfig(r=8, lora_alpha=32, lora_dropout=0.05,
                                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                task_type=TaskType.CAUSAL_LM))


def heft_train(model, enc, args, precision, clock, intervention=None, stage="lora") -> list[float]:
    """ms of each of heft's epochs after the first (which warms up): ``training.train`` as the
    stages call it."""
    trained = intervention.loreft.parameters() if intervention else model.parameters()
    groups = [{"params": [p for p in trained if p.requires_grad]}]
    kind = LoraConfig if stage == "lora" else ReftConfig
    cfg = kind(epochs=1 + args.reps, batch_size=args.batch, lr=2e-4, schedule="constant", warmup_ratio=0.0)
    objective = training.Objective(enc, models.label_loss("causal-lm", "last", ANSWERS), lambda m: None, 0,
                                   precision)
    times: list[float] = []

    def on_epoch(epoch, metrics):
        if epoch > 1:
            times.append(clock.stop())
        clock.start()
    training.train(model, groups, objective, cfg, desc=stage, intervention=intervention,
                   progress=Progress(on_epoch=on_epoch))
    return times


def heft_eval(model, enc, args, precision, clock) -> list[float]:
    kwargs = dict(family="causal-lm", pooling="last", answer_ids=ANSWERS, pad_id=0, precision=precision)
    warm = Encoded(enc.input_ids[:args.eval_batch], None, enc.labels[:args.eval_batch])
    scoring.predict(model, warm, args.eval_batch, **kwargs)
    times = []
    for _ in range(args.reps):
        clock.start()
        scoring.predict(model, enc, args.eval_batch, **kwargs)
        times.append(clock.stop())
    return times


# -- the bare loops ----------------------------------------------------------------------------
def bare_batches(enc, batches, device):
    """Left-padded device batches (the HF idiom for a causal LM: the answer position is the last)."""
    out = []
    for idx in batches:
        b = collate(enc, idx, 0, left=True)
        out.append({"input_ids": host_to_device(b["input_ids"], device),
                    "attention_mask": host_to_device(b["attention_mask"], device),
                    "targets": host_to_device(torch.tensor(ANSWERS)[b["labels"]], device),
                    "first": host_to_device(b["prompt_start"], device)})
    return out


def reft_hook(loreft, first: list[torch.Tensor]):
    """pyreft's LoReFT at the first and last prompt token of each left-padded row, every step."""
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        idx = torch.stack([first[0], torch.full_like(first[0], hidden.shape[1] - 1)], 1)
        gather = idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        old = hidden.gather(1, gather)
        with torch.autocast(hidden.device.type, enabled=False):
            new = loreft(old.float())
        return hidden.scatter(1, gather, new.to(hidden.dtype))
    return hook


def bare_train(model, params, enc, epochs_batches, device, precision, clock, loreft=None,
               layer=0) -> list[float]:
    """The loop a user writes: fused AdamW (on CUDA), the loss summed on the device, one read per epoch."""
    fused = True if device.type == "cuda" else None
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    first: list[torch.Tensor] = [torch.zeros(1, dtype=torch.long)]
    handle = models.transformer_layers(model)[layer].register_forward_hook(reft_hook(loreft, first)) \
        if loreft is not None else None
    model.train()
    times = []
    try:
        for epoch, batches in enumerate(epochs_batches):
            total = torch.zeros((), device=device)
            clock.start()
            for b in batches:
                first[0] = b["first"]
                with autocast(precision, device.type):
                    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                   logits_to_keep=1).logits[:, -1]
                loss = torch.nn.functional.cross_entropy(logits.float(), b["targets"])
                total += loss.detach()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
            total.item()   # the one host read of the epoch
            ms = clock.stop()
            if epoch > 0:   # the first warms up
                times.append(ms)
    finally:
        if handle:
            handle.remove()
        model.eval()
    return times


@torch.no_grad()
def bare_eval(model, batches, device, precision, clock, reps: int) -> list[float]:
    times = []
    for rep in range(1 + reps):
        preds = []
        clock.start()
        for b in batches[:1] if rep == 0 else batches:
            with autocast(precision, device.type):
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                               logits_to_keep=1).logits[:, -1]
            preds.append(logits[:, list(ANSWERS)].argmax(1))
        torch.cat(preds).cpu()   # the one host read of the pass
        ms = clock.stop()
        if rep > 0:   # the first (one batch) warms up
            times.append(ms)
    return times


# -- one size ----------------------------------------------------------------------------------
def cell(record: dict, stage: str, impl: str, ms: float, steps: int, tokens: int, padded: int,
         flops: float, padded_flops: float, peak: float | None, device) -> dict:
    per_step = ms / steps
    seconds = ms / 1000
    out = {**record, "stage": stage, "impl": impl, "ms_per_step": per_step,
           "tokens_per_s": tokens / seconds, "padded_tokens_per_s": padded / seconds,
           "tflops": flops / seconds / 1e12, "padded_tflops": padded_flops / seconds / 1e12}
    if peak:
        out["mfu"] = out["tflops"] / peak
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}), flush=True)
    return out


def run_size(size: str, args, device, dtype, precision, peak, started: float) -> tuple[list[dict], dict]:
    model = build(size, device, dtype)
    cfg = model.config
    L, d = cfg.num_hidden_layers, cfg.hidden_size
    layer = L * 15 // 32                     # the paper's layer 15 of 32, scaled to the depth
    n_matmul = block_params(model)
    print(f"\n{size}: {n_matmul / 1e9:.3f}B block matmul parameters, {L} blocks, d={d}, ReFT layer {layer}",
          flush=True)
    cells, profile = [], {}
    for workload in args.workloads.split(","):
        if time.perf_counter() - started > args.deadline_s:
            print(f"skipped {size} {workload}: past the {args.deadline_s:.0f} s deadline", flush=True)
            continue
        enc = rows(workload, args.batch * args.steps, args.max_length, cfg.vocab_size)
        epochs = [train_batches(enc, args.batch, 0, e) for e in range(1, args.reps + 2)]
        timed = epochs[1]   # the timed epochs' batches differ only in their grouping
        shape = (n_matmul, L, d, layer)
        tokens, padded, _, _ = work(enc, timed, "lora", shape)
        flop = {s: work(enc, timed, s, shape)[2:] for s in ("lora", "reft")}
        record = {"size": size, "workload": workload, "batch": args.batch, "max_length": args.max_length,
                  "rows_per_epoch": len(enc), "real_tokens_per_step": tokens / args.steps,
                  "padded_tokens_per_step": padded / args.steps}
        clock = Clock(device)
        bare = [bare_batches(enc, e, device) for e in epochs]

        def run(stage, impl, fn, steps=args.steps, tok=tokens, pad=padded, flops=None):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                times = fn()
                ms = statistics.median(times)
            except torch.cuda.OutOfMemoryError:
                print(f"{size} {workload} {stage} {impl}: out of memory", flush=True)
                cells.append({**record, "stage": stage, "impl": impl, "error": "out of memory"})
                return
            f = flops or flop[stage]
            cells.append(cell(record, stage, impl, ms, steps, tok, pad, f[0], f[1], peak, device))
            cells[-1]["ms_per_step_each"] = [t / steps for t in times]

        # LoRA: heft, then bare on a fresh adapter with the same seed
        peft_model = peft_wrap(model)
        run("lora", "heft", lambda: heft_train(peft_model, enc, args, precision, clock))
        model = peft_model.unload()
        peft_model = peft_wrap(model)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        run("lora", "bare", lambda: bare_train(peft_model, params, enc, bare, device, precision, clock))
        if args.profile and not profile:
            profile = profiled_steps(peft_model, enc, args, precision, device)
        model = peft_model.unload()
        # ReFT: heft with the prefix cache (filled once, timed apart), heft without, bare
        torch.manual_seed(0)
        iv = Intervention(LoReFT(d, 4).to(device), layer, "f1+l1")
        fill = Clock(device)
        fill.start()
        iv.prefix = PrefixCache(model, layer)
        iv.prefix.fill(enc, 0, precision)
        record_fill = fill.stop()
        run("reft", "heft+cache", lambda: heft_train(model, enc, args, precision, clock, iv, "reft"))
        cells[-1]["prefix_fill_ms"] = record_fill
        iv.prefix = None
        torch.manual_seed(0)
        iv = Intervention(LoReFT(d, 4).to(device), layer, "f1+l1")
        run("reft", "heft", lambda: heft_train(model, enc, args, precision, clock, iv, "reft"))
        torch.manual_seed(0)
        lo = LoReFT(d, 4).to(device)
        run("reft", "bare", lambda: bare_train(model, list(lo.parameters()), enc, bare, device, precision,
                                               clock, lo, layer))
        # evaluation: the whole epoch's rows, in scoring batches
        eval_batches = [list(range(j, min(j + args.eval_batch, len(enc))))
                        for j in range(0, len(enc), args.eval_batch)]
        order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
        eval_batches = [[order[i] for i in b] for b in eval_batches]
        e_tokens, e_padded, *e_flops = work(enc, eval_batches, "eval", shape)
        n_eval = len(eval_batches)
        run("eval", "heft", lambda: heft_eval(model, enc, args, precision, clock), n_eval, e_tokens, e_padded,
            e_flops)
        bare_eval_batches = bare_batches(enc, eval_batches, device)
        run("eval", "bare", lambda: bare_eval(model, bare_eval_batches, device, precision, clock, args.reps),
            n_eval, e_tokens, e_padded, e_flops)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return cells, profile


def profiled_steps(peft_model, enc, args, precision, device) -> dict:
    """Three steps of heft's LoRA under the profiler: the GPU's busy share of the window, the ten
    heaviest kernels, the host syncs per step."""
    from torch.profiler import ProfilerActivity, profile
    three = Encoded(enc.input_ids[:3 * args.batch], None, enc.labels[:3 * args.batch])
    cfg = LoraConfig(epochs=1, batch_size=args.batch, lr=2e-4, schedule="constant", warmup_ratio=0.0)
    objective = training.Objective(three, models.label_loss("causal-lm", "last", ANSWERS), lambda m: None, 0,
                                   precision)
    groups = [{"params": [p for p in peft_model.parameters() if p.requires_grad]}]
    training.train(peft_model, groups, objective, cfg, desc="warm")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    counted: dict = {}
    start = time.perf_counter()
    with profile(activities=activities) as prof, syncs_counted(device, peft_model, counted):
        training.train(peft_model, groups, objective, cfg, desc="profiled")
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall_us = (time.perf_counter() - start) * 1e6
    out: dict = {"steps": 3, "syncs_per_step": counted["syncs"] / 3, "window_ms": wall_us / 1000}
    events = prof.key_averages()
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        spans = sorted((k.time_range.start, k.time_range.end) for k in kernels)
        busy, end = 0, -math.inf
        for a, b in spans:   # the union of the kernels' intervals
            busy += max(0, b - max(a, end))
            end = max(end, b)
        window = (spans[-1][1] - spans[0][0]) if spans else 1
        out["gpu_busy_share_of_kernel_window"] = busy / window
        out["gpu_busy_share_of_wall"] = busy / wall_us
        heavy = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:10]
        out["heaviest_kernels"] = [{"name": e.key[:120], "ms": e.self_device_time_total / 1000,
                                    "calls": e.count} for e in heavy]
    else:
        heavy = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
        out["heaviest_ops"] = [{"name": e.key[:120], "ms": e.self_cpu_time_total / 1000, "calls": e.count}
                               for e in heavy]
    print(json.dumps(out, indent=1), flush=True)
    return out


def table(cells: list[dict]) -> str:
    lines = ["| size | workload | stage | impl | ms/step | tokens/s real (padded) | TFLOP/s | MFU "
             "| peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        if "error" in c:
            lines.append(f"| {c['size']} | {c['workload']} | {c['stage']} | {c['impl']} | {c['error']} |||||")
            continue
        mfu = f"{c['mfu']:.1%}" if "mfu" in c else ""
        mem = f"{c['peak_memory_gib']:.1f}" if "peak_memory_gib" in c else ""
        lines.append(f"| {c['size']} | {c['workload']} | {c['stage']} | {c['impl']} | "
                     f"{c['ms_per_step']:.1f} | {c['tokens_per_s']:,.0f} ({c['padded_tokens_per_s']:,.0f}) | "
                     f"{c['tflops']:.3g} | {mfu} | {mem} |")
    return "\n".join(lines)


def ratios(cells: list[dict]) -> list[dict]:
    """heft / bare ms per step for each (size, workload, stage), and heft with the prefix cache."""
    out = []
    index = {(c["size"], c["workload"], c["stage"], c["impl"]): c for c in cells if "error" not in c}
    for (size, workload, stage, impl), c in index.items():
        bare = index.get((size, workload, stage, "bare"))
        if impl != "bare" and bare:
            out.append({"size": size, "workload": workload, "stage": stage, "impl": impl,
                        "heft_over_bare": c["ms_per_step"] / bare["ms_per_step"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", "--size", default="", help="comma list of " + ", ".join(SIZES)
                    + " (default: 135m,1b,7b on a GPU, tiny on the CPU)")
    ap.add_argument("--workloads", default="boolq,full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=0, help="rows per training step (default 16; CPU 4)")
    ap.add_argument("--eval-batch", type=int, default=0, help="rows per scoring batch (default 64; CPU 8)")
    ap.add_argument("--steps", type=int, default=0,
                    help="warm-up steps, then as many timed steps (default 10; CPU 4)")
    ap.add_argument("--max-length", type=int, default=0, help="tokens per row at most (default 512; CPU 128)")
    ap.add_argument("--reps", type=int, default=0,
                    help="timed epochs (passes) per cell, the median reported (default 1; CPU 3)")
    ap.add_argument("--profile", action="store_true", help="three profiled steps of heft's LoRA (first size)")
    ap.add_argument("--deadline-s", type=float, default=480.0, help="no workload starts after this")
    ap.add_argument("--out", default="", help="a folder for the JSON record (docs/gpu on a GPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    args.sizes = args.sizes or ("tiny" if cpu else "135m,1b,7b")
    args.batch = args.batch or (4 if cpu else 16)
    args.eval_batch = args.eval_batch or (8 if cpu else 64)
    args.steps = args.steps or (4 if cpu else 10)
    args.reps = args.reps or (3 if cpu else 1)
    args.max_length = args.max_length or (128 if cpu else 512)
    dtype = torch.float32 if cpu else torch.bfloat16
    precision = "off" if cpu else "bfloat16"   # CUDA: autocast, the adapters in bf16 (precision.py)
    name = torch.cuda.get_device_name(device) if not cpu else "cpu"
    peak = peak_tflops(name) if not cpu else None
    print(f"device: {name} (dense bf16 peak {peak or 'unknown'} TFLOP/s), torch {torch.__version__}, "
          f"batch {args.batch}, {args.steps}+{args.steps} steps, max_length {args.max_length}", flush=True)
    started = time.perf_counter()
    cells, profile = [], {}
    for size in args.sizes.split(","):
        got, prof = run_size(size, args, device, dtype, precision, peak, started)
        cells += got
        profile = profile or prof
    print("\n" + table(cells))
    print("\nheft / bare, ms per step:")
    for r in ratios(cells):
        print(f"  {r['size']} {r['workload']} {r['stage']} {r['impl']}: {r['heft_over_bare']:.3f}")
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d")
        slug = name.replace("NVIDIA ", "").replace(" ", "-").lower()
        record = {"device": name, "peak_bf16_tflops": peak, "torch": torch.__version__, "date": stamp,
                  "command": " ".join(["python3", "bench/real_work.py", *sys.argv[1:]]),
                  "flops": "per token: LoRA 4N + 12nLd, ReFT 2N + 4nLd + (L-1-k)/L (2N + 8nLd), "
                           "eval 2N + 4nLd",
                  "cells": cells, "heft_over_bare": ratios(cells), "profile": profile,
                  "seconds": time.perf_counter() - started}
        path = folder / f"real-work-{slug}-{stamp}.json"
        path.write_text(json.dumps(record, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
