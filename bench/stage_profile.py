"""Benchmark: wall time, tokens/s and peak memory of each stage, one process per stage.

    .venv/bin/python bench/stage_profile.py                                # stories260K, then MiniLM (~5 min)
    .venv/bin/python bench/stage_profile.py --preset deployments/minilm-boolq.yaml data.max_train=640

Each stage runs in a fresh child process on a shared artifact root (its parents were
built by the previous children and are found in the store), so the child's peak RSS
(``ru_maxrss``) is that stage's peak memory; an import-only child gives the baseline
(Python + torch + transformers + peft).  Tokens are the real (unpadded) prompt tokens
the stage pushed through the model: training = train split x epochs + the per-epoch
validation passes; evaluation = the held-out split.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = {"deployments/stories-boolq.yaml": ["data.max_train=1000"],
           "deployments/minilm-boolq.yaml": ["data.max_train=320", "lora.epochs=1", "reft.epochs=1"]}
CHILD = r"""
import json, resource, sys, time
from heft.store.artifacts import ArtifactStore
from heft.stages.inputs import StageInputs
from heft.plan import plan
from heft.presets import load_run_config
from heft.stages import run_step
target, preset, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
cfg = load_run_config(preset, overrides)
store = ArtifactStore(cfg.artifact_root)
if target == "baseline":
    import torch, transformers, peft  # noqa: F401
    print(json.dumps({"stage": "baseline",
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    sys.exit()
class Done(Exception):
    pass
def tokens(parent, split):
    inputs = StageInputs.of(parent, store)
    return sum(len(x) for x in inputs.sequences(split, inputs.tokenizer()).input_ids)
def call(step, parent):
    stage, c, name = step.stage, step.config, step.label
    if name != target:
        return run_step(step, parent, store)
    if store.find(stage, step.key) is not None:
        raise SystemExit(f"{name} is cached already: use a fresh root")
    t0 = time.perf_counter()
    art = run_step(step, parent, store)
    seconds = time.perf_counter() - t0
    n = 0
    if stage in ("lora", "reft"):
        n = c.epochs * (tokens(parent, "train") + tokens(parent, "valid"))
    elif stage == "evaluate":
        n = tokens(parent, "eval")
    print(json.dumps({"stage": name, "seconds": seconds, "tokens": n,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    raise Done()
done = {}
try:
    for step in plan(cfg).steps:
        done[step.key] = call(step, done.get(step.parent_key))
except Done:
    pass
"""
ORDER = ["data", "lora", "merge", "evaluate:lora", "evaluate:merged", "reft", "evaluate:heft"]


def profile(preset: str, overrides: list[str]) -> list[dict]:
    work = tempfile.mkdtemp(prefix="heft-profile-")
    args = [preset, f"artifact_root={work}/art", *overrides]
    rows = []
    for stage in ["baseline", *ORDER]:
        out = subprocess.run([sys.executable, "-c", CHILD, stage, *args], cwd=ROOT, capture_output=True,
                             text=True, env={**__import__("os").environ, "TQDM_DISABLE": "1"})
        if out.returncode:
            raise SystemExit(f"{stage} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    runs = {args.preset: args.overrides} if args.preset else DEFAULT
    for preset, overrides in runs.items():
        rows = profile(preset, overrides)
        base = rows[0]["peak_rss_mb"]
        print(f"\n{preset} {' '.join(overrides)}  (baseline process {base:.0f} MB)")
        print("| stage | wall s | tokens | tokens/s | peak RSS MB | above baseline MB |\n"
              "|---|---|---|---|---|---|")
        for r in rows[1:]:
            rate = f"{r['tokens'] / r['seconds']:.0f}" if r["tokens"] else ""
            print(f"| {r['stage']} | {r['seconds']:.1f} | {r['tokens'] or ''} | {rate} | "
                  f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - base:.0f} |")


if __name__ == "__main__":
    main()
