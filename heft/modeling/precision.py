"""CPU precision: bf16 autocast where the CPU has bf16 matmul, float32 elsewhere.

``model.autocast`` is ``auto``, ``bfloat16`` or ``off``.  Under bf16 autocast the matmuls of
the model's forward pass run in bfloat16 while every stored tensor stays float32: the frozen
weights, the LoRA and head parameters, the optimizer state, and the LoReFT intervention
(heft/modeling/loreft.py leaves autocast for its own math), so an AdamW step of lr 2e-4 is
never rounded to a bf16 ulp.  The loss is computed in float32 (heft/modeling/models.py).

Training under autocast gives other weights than float32 training, so the choice is part of
every key below the base model: ``resolved`` turns ``auto`` into what this machine does, and
the plan keys on that (heft/plan.py).  On a CUDA device the same choice runs the same autocast
(``torch.autocast("cuda", bfloat16)``, since issue 38; before, CUDA ran the weights' dtype only):
with bf16 weights (the GPU presets' ``model.dtype``) it makes peft's float32 LoRA adapters
compute in bf16 from their float32 master weights, as the frozen weights do, and
``adapters_follow_autocast`` stops peft from casting every adapted projection's bf16 input up to
float32 first (autocast would cast it straight back).  ``model.autocast=off`` keeps the float32
adapter path.

Whether the CPU has bf16 matmul is what torch's oneDNN build reports
(``torch.ops.mkldnn._is_mkldnn_bf16_supported``).  Measured on two 2-core AMD EPYC machines:
one without avx512_bf16 reported False, and bf16 autocast ran a 576x1536 matmul 43x *slower*
than float32 there, so ``auto`` must not pick it; one with avx512_bf16 (2026-12-02) reports
True, a 2048^2 matmul runs at 160-165 GFLOP/s in float32 and 330-380 in bf16, and a 16-row
MiniLM epoch took 0.42x the float32 time for LoRA and 0.78x for ReFT (bench/cpu_precision.py).
Asking torch costs an import (seconds); the answer is cached per CPU model and flags and
torch version, so a fully cached rerun still never imports torch.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from contextlib import contextmanager, nullcontext
from pathlib import Path

from heft.store.hashing import cache_dir

CHOICES = ("auto", "bfloat16", "off")


def cpu_identity() -> str:
    """CPU model and flags (Linux /proc/cpuinfo) plus the torch version: what the answer depends on."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = [platform.processor()]
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "none"
    return hashlib.sha256("\n".join(lines + [torch_version]).encode()).hexdigest()[:16]


def cpu_has_bf16_matmul() -> bool:
    """torch's own answer, cached in HEFT_CACHE_DIR per CPU identity."""
    path = cache_dir() / "cpu-bf16.json"
    ident = cpu_identity()
    try:
        cached = json.loads(path.read_text())
        if ident in cached:
            return bool(cached[ident])
    except (OSError, ValueError):
        cached = {}
    import torch
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    answer = bool(probe and torch.backends.mkldnn.is_available() and probe())
    cached = cached if isinstance(cached, dict) else {}
    cached[ident] = answer
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cached))
    return answer


def resolved(choice: str) -> str:
    """'bfloat16' or 'off' for this machine ('auto': bf16 only where the CPU has bf16 matmul)."""
    if choice == "auto":
        return "bfloat16" if cpu_has_bf16_matmul() else "off"
    return choice


def autocast(choice: str, device_type: str = "cpu"):
    """The context a forward pass runs in: bf16 autocast on the CPU or CUDA, or nothing."""
    if choice == "bfloat16" and device_type in ("cpu", "cuda"):
        import torch
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def adapters_follow_autocast(model, choice: str):
    """Under bf16 autocast on a model whose frozen weights are not float32, peft's adapter layers
    take their input as it comes (bf16) instead of casting it to the adapter's float32 first: the
    adapter's matmuls run in bf16 either way (autocast casts the float32 master weights per op),
    so the cast is one wasted kernel per adapted projection.  A float32 model (the CPU default)
    is left as it was, to the bit."""
    layers = []
    if choice == "bfloat16" and next(model.parameters()).dtype != _float32():
        layers = [m for m in model.modules() if getattr(m, "cast_input_dtype_enabled", False)]
    for m in layers:
        m.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for m in layers:
            m.cast_input_dtype_enabled = True


def _float32():
    import torch
    return torch.float32
