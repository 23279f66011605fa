"""Benchmark: CPU bf16 autocast against float32 on the embedded default (MiniLM), side by side.

    TQDM_DISABLE=1 .venv/bin/python bench/cpu_precision.py --reps 3          # 160 train rows, ~12 min here
    TQDM_DISABLE=1 .venv/bin/python bench/cpu_precision.py --rows 480 --eval 600 --reps 2

1. Matmul peak of this machine: a 2048x2048 @ 2048x2048 matmul (2 n^3 FLOPs), best of 10, in
   float32 and in bfloat16 (plain bf16 tensors, and float32 tensors under bf16 autocast).
2. One LoRA epoch, the merge and one ReFT epoch of the MiniLM preset (heft's own stages, a
   fresh artifact root per run), ``model.autocast=off`` and ``=bfloat16`` alternating
   ``--reps`` times: training steps per second of each stage, the peak RSS of each run (sampled
   every 20 ms), the per-step training-loss curve, held-out accuracy with its 95% interval, and
   how many held-out predictions the two precisions agree on.
3. Throughput as a share of the peak.  FLOPs per trained token, N = the parameters of the
   encoder blocks' matmuls (q, k, v, attention output, two MLP matmuls: 12 d^2 per block),
   n = tokens in the row, L blocks, d = hidden size:
     LoRA: forward 2N + 4 n L d (attention scores and values), backward 2N + 8 n L d for the
           activation gradients (the frozen weights get none; LoRA's own are r/d, ignored);
     ReFT at layer k: forward 2N + 4 n L d, backward only above k: (L-1-k)/L of the LoRA figure.
   Tokens are counted from the real rows of the epoch (dynamic padding adds a few).
Both precisions share the seed, rows, batches and schedule; only the matmul precision differs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common import PeakRSS, adapter_flops_per_token  # noqa: E402
from heft.modeling import models  # noqa: E402
from heft.run.execute import run_pipeline  # noqa: E402
from heft.presets import load_run_config  # noqa: E402
from heft.progress import Progress  # noqa: E402
from heft.stages.inputs import StageInputs  # noqa: E402
from heft.store.artifacts import ArtifactStore  # noqa: E402

PRESET = "deployments/minilm-boolq.yaml"


def matmul_peak(dtype: torch.dtype, autocast: bool = False, n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of the best of ``reps`` n x n matmuls."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):  # one warm-up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            (a @ b).sum()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def flops_per_token(hf_config, tokens_per_row: float, stage: str, layer: int) -> float:
    d, depth = hf_config.hidden_size, hf_config.num_hidden_layers
    matmul = (4 * d * d + 2 * d * hf_config.intermediate_size) * depth  # N
    share = (depth - 1 - layer) / depth if stage == "reft" else 1.0
    return adapter_flops_per_token(matmul, tokens_per_row, depth, d, backward_share=share)


def one_run(precision: str, rows: int, eval_rows: int, work: Path) -> dict:
    cfg = load_run_config(PRESET, [f"artifact_root={work}/{precision}-{time.monotonic_ns()}",
                                   f"model.autocast={precision}", f"data.max_train={rows}",
                                   f"data.max_eval={eval_rows}", "lora.epochs=1", "reft.epochs=1"])
    curve: list[float] = []
    progress = Progress(on_step=lambda step, m: curve.append(m["train_loss_step"]), every=1)
    with PeakRSS() as rss:
        out = run_pipeline(cfg, progress=progress)
    store = ArtifactStore(cfg.artifact_root)
    inputs = StageInputs.of(out["base"], store)
    tok = inputs.tokenizer()
    lengths = [len(x) for x in inputs.sequences("train", tok).input_ids]
    hf = models.auto_config(cfg.model.name)
    result = {"precision": precision, "peak_rss_mb": rss.peak_mb, "loss_curve": curve}
    for stage in ("lora", "reft"):
        hist = json.loads((store.local_path(out[stage]) / "history.json").read_text())[0]
        steps = -(-len(lengths) // getattr(cfg, stage).batch_size)
        per_token = flops_per_token(hf, statistics.fmean(lengths), stage, cfg.reft.layer)
        result[stage] = {"seconds": hist["epoch_seconds"], "steps_per_s": steps / hist["epoch_seconds"],
                         "gflops": sum(lengths) * per_token / hist["epoch_seconds"] / 1e9,
                         "train_loss": hist["train_loss"]}
    for name in ("eval:lora", "eval:heft"):
        m = out[name].metrics
        preds = [json.loads(line)["pred"] for line in
                 (store.local_path(out[name]) / "predictions.jsonl").read_text().splitlines()]
        result[name] = {"accuracy": m["accuracy"], "low": m["ci95_low"], "high": m["ci95_high"],
                        "n": m["n"], "preds": preds}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=160, help="training rows (one epoch per stage)")
    ap.add_argument("--eval", type=int, default=200, help="held-out rows scored")
    ap.add_argument("--reps", type=int, default=1, help="alternating float32 / bf16 pairs")
    args = ap.parse_args()
    from heft.modeling.precision import cpu_has_bf16_matmul
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"oneDNN bf16 matmul support: {cpu_has_bf16_matmul()}")
    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16),
             "bf16 autocast": matmul_peak(torch.float32, autocast=True)}
    print("matmul peak (GFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()))
    work = Path(tempfile.mkdtemp(prefix="heft-precision-"))
    runs = {"off": [], "bfloat16": []}
    for rep in range(args.reps):
        for precision in ("off", "bfloat16"):
            runs[precision].append(one_run(precision, args.rows, args.eval, work))
            r = runs[precision][-1]
            print(f"rep {rep} {precision:>8}: lora {r['lora']['seconds']:.1f} s, "
                  f"reft {r['reft']['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    peak_of = {"off": peaks["float32"], "bfloat16": peaks["bfloat16"]}
    print("\n| stage | precision | steps/s (median) | GFLOP/s | share of its peak | train loss |")
    print("|---|---|---|---|---|---|")
    for stage in ("lora", "reft"):
        for p in ("off", "bfloat16"):
            rs = [r[stage] for r in runs[p]]
            g = statistics.median(r["gflops"] for r in rs)
            print(f"| {stage} | {'float32' if p == 'off' else 'bf16 autocast'} | "
                  f"{statistics.median(r['steps_per_s'] for r in rs):.3f} | {g:.1f} | {g / peak_of[p]:.1%} | "
                  f"{statistics.median(r['train_loss'] for r in rs):.4f} |")
        ratio = statistics.median(b[stage]["seconds"] / a[stage]["seconds"] for a, b in zip(runs["off"],
                                                                                              runs["bfloat16"]))
        print(f"| {stage} | bf16 / float32 time | {ratio:.2f}x | | | |")
    print("\n| evaluation | float32 accuracy (95% CI) | bf16 accuracy (95% CI) | predictions agreeing |")
    print("|---|---|---|---|")
    for name in ("eval:lora", "eval:heft"):
        a, b = runs["off"][0][name], runs["bfloat16"][0][name]
        agree = sum(x == y for x, y in zip(a["preds"], b["preds"])) / len(a["preds"])
        print(f"| {name[5:]} | {a['accuracy']:.2%} ({a['low']:.2%}-{a['high']:.2%}) | "
              f"{b['accuracy']:.2%} ({b['low']:.2%}-{b['high']:.2%}) | {agree:.1%} of {a['n']} |")
    print(f"\npeak RSS (MB): float32 {statistics.median(r['peak_rss_mb'] for r in runs['off']):.0f}, "
          f"bf16 {statistics.median(r['peak_rss_mb'] for r in runs['bfloat16']):.0f}")
    first = [runs[p][0]["loss_curve"] for p in ("off", "bfloat16")]
    print("per-step LoRA+ReFT loss, float32: " + " ".join(f"{x:.3f}" for x in first[0]))
    print("per-step LoRA+ReFT loss, bf16:    " + " ".join(f"{x:.3f}" for x in first[1]))


if __name__ == "__main__":
    main()
