"""Benchmark: the ReFT stage with the prefix cache against without it, side by side.

    .venv/bin/python bench/reft_prefix_cache.py                 # MiniLM default, 400 rows, 2 epochs, ~10 min
    .venv/bin/python bench/reft_prefix_cache.py --arms cache,plain --autocast off    # float32 matmuls
    .venv/bin/python bench/reft_prefix_cache.py --preset deployments/stories-boolq.yaml --rows 1000

Each arm runs the same ReFT-only pipeline (data, base, ReFT, evaluation) on its own artifact root,
so nothing is shared but the files on disk.  The arms, in alternating order per rep:
  * cache:    reft.prefix_cache=true,  reft.prefix_dropout=false (the frozen blocks in eval mode)
  * plain:    reft.prefix_cache=false, reft.prefix_dropout=false (the same numbers, every block
    computed every step)
  * dropout:  reft.prefix_cache=false, reft.prefix_dropout=true (the default: the frozen blocks
    in train mode, as pyreft trains; for an encoder, the behaviour the cache cannot serve).
Reported: the ReFT stage's wall time (cache / plain: the median of the paired ratios and the
ratio of the minima), the validation and held-out accuracy of each arm, and the largest
difference between the cache's and the plain arm's trained tensors (intervention and head).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import ratios  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from heft.plan import plan  # noqa: E402
from heft.presets import load_run_config  # noqa: E402
from heft.stages import run_step  # noqa: E402
from heft.store.artifacts import ArtifactStore  # noqa: E402

ARMS = {"cache": ["reft.prefix_cache=true", "reft.prefix_dropout=false"],
        "plain": ["reft.prefix_cache=false", "reft.prefix_dropout=false"],
        "dropout": ["reft.prefix_cache=false", "reft.prefix_dropout=true"]}


def run_arm(preset: str, overrides: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="heft-prefix-"))
    cfg = load_run_config(preset, [f"artifact_root={work}/art", *overrides])
    store = ArtifactStore(cfg.artifact_root)
    done, seconds = {}, 0.0
    for step in plan(cfg).steps:
        start = time.perf_counter()
        done[step.key] = run_step(step, done.get(step.parent_key), store)
        if step.stage == "reft":
            seconds = time.perf_counter() - start
            reft = done[step.key]
    folder = store.local_path(reft)
    tensors = load_file(str(folder / "intervention.safetensors"))
    if (folder / "head.safetensors").exists():
        tensors.update({f"head.{k}": v for k, v in load_file(str(folder / "head.safetensors")).items()})
    final = done[plan(cfg).steps[-1].key]
    return {"seconds": seconds, "valid": reft.metrics.get("final_valid_accuracy"),
            "heldout": final.metrics["accuracy"], "tensors": tensors, "metrics": reft.metrics}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="deployments/minilm-boolq.yaml")
    ap.add_argument("--rows", type=int, default=400, help="training rows")
    ap.add_argument("--valid", type=int, default=100, help="validation rows")
    ap.add_argument("--eval", type=int, default=300, help="held-out rows")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--arms", default="cache,plain,dropout")
    ap.add_argument("--autocast", default="", help="model.autocast for every arm (default: the preset's)")
    args = ap.parse_args()
    common = ["mode=reft-only", f"data.max_train={args.rows}", f"data.valid_size={args.valid}",
              f"data.max_eval={args.eval}", f"reft.epochs={args.epochs}"]
    common += [f"model.autocast={args.autocast}"] if args.autocast else []
    arms = args.arms.split(",")
    print(f"{args.preset}: {args.rows} training rows, {args.valid} validation, {args.eval} held out, "
          f"{args.epochs} ReFT epochs, torch threads {torch.get_num_threads()}", flush=True)
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    for rep in range(args.reps):
        for arm in arms if rep % 2 == 0 else arms[::-1]:
            runs[arm].append(run_arm(args.preset, [*common, *ARMS[arm]]))
            r, m = runs[arm][-1], runs[arm][-1]["metrics"]
            print(f"rep {rep + 1} {arm}: reft stage {r['seconds']:.1f} s, validation {r['valid']:.2%}, "
                  f"held-out {r['heldout']:.2%}, prefix cache {m.get('prefix_cache_mb', 0):.0f} MB "
                  f"({m.get('prefix_cache_batches', 0)} batches)", flush=True)
    print("\n| arm | ReFT stage s (median) | validation | held-out |\n|---|---|---|---|")
    for arm in arms:
        print(f"| {arm} | {statistics.median(r['seconds'] for r in runs[arm]):.1f} | "
              f"{runs[arm][-1]['valid']:.2%} | {runs[arm][-1]['heldout']:.2%} |")
    if "cache" in runs and "plain" in runs:
        paired, minima = ratios([r["seconds"] for r in runs["cache"]], [r["seconds"] for r in runs["plain"]])
        a, b = runs["cache"][-1]["tensors"], runs["plain"][-1]["tensors"]
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in b)
        scale = max(float(b[k].float().abs().max()) for k in b)
        print(f"\ncache / plain wall time: median of paired ratios {paired:.3f}, of minima {minima:.3f}")
        same = {k: "equal" if runs["cache"][-1][k] == runs["plain"][-1][k] else "differs"
                for k in ("valid", "heldout")}
        print(f"largest difference of the trained tensors: {diff:.2e} (largest entry {scale:.2f}); "
              f"validation {same['valid']}, held-out {same['heldout']}")


if __name__ == "__main__":
    main()
