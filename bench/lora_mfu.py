"""Benchmark: model FLOPs utilisation (MFU) of heft's LoRA training loop on a GPU.

    .venv/bin/python bench/lora_mfu.py                          # Llama-style 1.1B, bf16, CUDA
    .venv/bin/python bench/lora_mfu.py --size 1b --batch 16 --seq 512
    .venv/bin/python bench/lora_mfu.py --size tiny --device cpu  # a check that it runs (no MFU)

No hub access is needed: the model is built from a config with random weights, at the
shape of a real architecture (``1b`` = TinyLlama-1.1B: 22 blocks, d=2048, GQA 32/4 heads,
SwiGLU 5632, vocab 32000), in bf16 with SDPA attention, and wrapped in peft LoRA exactly as
heft/stages/lora.py does (rank 8, alpha 32, q/k/v/o).  The loop is heft's own ``train`` (tqdm,
per-step finiteness check, clipping, AdamW, schedule) on synthetic rows of ``--seq`` tokens;
random weights change nothing about the throughput.

FLOPs per token, with N the parameters of the blocks' matmuls (embeddings excluded; the
LM head runs on one position per row, as heft scores only the answer token):
  * forward 2N, backward 2N for the activation gradients, none for the frozen weights
    (LoRA's own weight gradients are r/d of that, ignored): 4N;
  * attention scores and values: 4 L d per block forward, twice that backward: 12 n L d.
MFU = tokens/s x (4N + 12 n L d) / peak.  The 6N convention of full fine-tuning (which would
report 1.5x the matmul share) is printed beside it, so figures compare with other reports.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from heft.data.batching import Encoded  # noqa: E402
from heft.config import LoraConfig  # noqa: E402
from heft.modeling.models import label_loss  # noqa: E402
from heft.modeling.training import Objective, train  # noqa: E402
from common import adapter_flops_per_token  # noqa: E402

SIZES = {  # LlamaConfig fields
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=32000),
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=32000),
}
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAKS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}


def peak_tflops(name: str) -> float | None:
    for key in sorted(PEAKS, key=len, reverse=True):  # 'H100 PCIe' before 'H100'
        if all(part in name for part in key.split()):
            return PEAKS[key]
    return None


def build(size: str, device: torch.device, dtype: torch.dtype):
    from peft import LoraConfig as PeftLoraConfig, TaskType, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(**SIZES[size], max_position_embeddings=4096, attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.requires_grad_(False)
    model = get_peft_model(model, PeftLoraConfig(r=8, lora_alpha=32, lora_dropout=0.05,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 task_type=TaskType.CAUSAL_LM))
    return model, cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512, help="tokens per row (every row full: no padding)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per timed epoch")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, mcfg = build(args.size, device, dtype)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_matmul = sum(p.numel() for n, p in model.named_parameters()
                   if ".layers." in n and p.dim() == 2 and "lora_" not in n)
    rows = args.batch * args.steps
    rng = random.Random(0)
    enc = Encoded(input_ids=[[rng.randrange(3, mcfg.vocab_size) for _ in range(args.seq)]
                             for _ in range(rows)],
                  token_type_ids=None, labels=[rng.randrange(2) for _ in range(rows)])
    # epoch 1 warms up (kernel selection, allocator); epoch 2 is timed by train() itself
    cfg = LoraConfig(epochs=2, batch_size=args.batch, lr=2e-4, schedule="constant", warmup_ratio=0.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    objective = Objective(enc, label_loss("causal-lm", "last", (1, 2)), lambda m: None, pad_id=0)
    history, _ = train(model, [{"params": [p for _, p in named]}], objective, cfg, desc="lora-mfu")
    wall = time.perf_counter() - start
    seconds = history[-1]["epoch_seconds"]
    tokens_per_s = rows * args.seq / seconds
    d, n_layers, L = mcfg.hidden_size, mcfg.num_hidden_layers, args.seq
    flops_token = adapter_flops_per_token(n_matmul, L, n_layers, d)  # 4N + 12nLd
    achieved = tokens_per_s * flops_token / 1e12
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    print(f"device: {name}; model: Llama-style {args.size}, {n_matmul / 1e9:.3f}B block matmul params, "
          f"{sum(p.numel() for _, p in named) / 1e6:.2f}M trainable (LoRA r=8 q/k/v/o), {dtype}")
    print(f"batch {args.batch} x {args.seq} tokens, {args.steps} steps timed "
          f"(epoch 2; both epochs {wall:.1f} s)")
    achieved_6n = tokens_per_s * (6 * n_matmul + 12 * n_layers * L * d) / 1e12
    print(f"step {seconds / args.steps * 1000:.1f} ms, {tokens_per_s:,.0f} tokens/s, "
          f"{achieved:.3g} TFLOP/s by 4N+12nLd ({achieved_6n:.3g} "
          f"by the 6N convention)")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    if peak:
        print(f"MFU {achieved / peak:.1%} of {peak:.0f} TFLOP/s bf16 dense "
              f"({achieved_6n / peak:.1%} by the 6N convention)")
    else:
        print("MFU: no bf16 peak known for this device (pass --peak-tflops)")


if __name__ == "__main__":
    main()
