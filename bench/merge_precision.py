"""Benchmark: how far the LoRA merge moves the scores in each weights dtype, against how far
the LoRA update itself moved them (the figures behind heft/stages/merge.py's TOLERANCE).

    .venv/bin/python bench/merge_precision.py                # stories260K and MiniLM, BoolQ passages (~5 min)
    .venv/bin/python bench/merge_precision.py --models stories --dtypes bfloat16

Per model and dtype, on one fresh artifact root: mode ``lora-only`` (LoRA 1 epoch, merge,
evaluations of the adapter and of the merged model) with the merge check switched off so
that every figure is seen, and mode ``base`` (the untrained model's evaluation on the same
held-out rows).  Printed, each relative to max(1, max|score|) as the merge check does:
the merge stage's own check (``merge_rel_diff``, in float32 on its validation batch), what
rounding the merged weights to the dtype did to that batch (``merge_dtype_rounding``), the largest
adapter -> merged score change over the held-out rows, the largest base -> adapter change
(the LoRA update: what a dropped or mis-scaled merge would be off by), and how many
held-out predictions the merge kept.  A stage that fails (float16 without loss scaling:
NaN) is printed as such.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import heft.stages.merge  # noqa: E402
from heft.store.artifacts import ArtifactStore  # noqa: E402
from heft.config import DataConfig, LoraConfig, ModelConfig, RunConfig  # noqa: E402
from heft.run.execute import run_pipeline  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = {"stories": (str(SHARED / "models" / "stories260K"), 300),  # (model, training rows)
          "minilm": ("sentence-transformers/all-MiniLM-L6-v2", 120)}


def scores(store: ArtifactStore, art) -> list[tuple[float, float, int]]:
    lines = (store.local_path(art) / "predictions.jsonl").read_text().splitlines()
    return [(r["score_false"], r["score_true"], r["pred"]) for r in map(json.loads, lines)]


def largest_change(a, b) -> float:
    """max |score change| over rows and both classes, relative to max(1, max|score in a|)."""
    scale = max(1.0, max(abs(s) for row in a for s in row[:2]))
    return max(abs(x[i] - y[i]) for x, y in zip(a, b) for i in (0, 1)) / scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["stories", "minilm"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    ap.add_argument("--source", default=str(SHARED / "data" / "boolq" / "validation.jsonl"))
    args = ap.parse_args()
    # measure, never refuse
    heft.stages.merge.TOLERANCE = float("inf")
    work = Path(tempfile.mkdtemp(prefix="heft-bench-merge-"))
    print(f"{'model':<8} {'dtype':<9} {'merge check':>11} {'dtype rounding':>14} {'adapter->merged':>15} "
          f"{'LoRA update':>11}  predictions kept")
    for name in args.models:
        model, rows = MODELS[name]
        for dtype in args.dtypes:
            cfg = RunConfig(model=ModelConfig(name=model, max_length=128, dtype=dtype),
                            data=DataConfig(source=args.source, holdout_size=200, valid_size=60,
                                            max_train=rows),
                            lora=LoraConfig(epochs=1, lr=3e-3, batch_size=16),
                            artifact_root=str(work / f"{name}-{dtype}"), mode="lora-only")
            try:
                out = run_pipeline(cfg)
                base = run_pipeline(RunConfig(**{**vars(cfg), "mode": "base"}))
            except FloatingPointError as e:
                print(f"{name:<8} {dtype:<9} failed: {e}")
                continue
            store = ArtifactStore(cfg.artifact_root)
            evals = (out["eval:lora"], out["eval:merged"], base["eval:base"])
            lora, merged, untrained = (scores(store, a) for a in evals)
            kept = sum(x[2] == y[2] for x, y in zip(lora, merged))
            m = out["merge"].metrics
            print(f"{name:<8} {dtype:<9} {m['merge_rel_diff']:>11.2e} {m['merge_dtype_rounding']:>14.2e} "
                  f"{largest_change(lora, merged):>15.2e} {largest_change(lora, untrained):>11.2e}  "
                  f"{kept}/{len(lora)}", flush=True)


if __name__ == "__main__":
    main()
