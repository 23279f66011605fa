"""The whole HEFT chain in bfloat16, the dtype of the GPU presets (Llama-2-7B on a GPU pool).

On this CPU machine it runs the same code path the GPU runs, dtype for dtype: the base and
merged weights in bf16, the LoRA adapter upcast to float32 by peft, the LoReFT intervention
kept in float32 (torch has no bf16 householder product, and bf16 would round its small
AdamW steps away; heft/modeling/loreft.py), and the merge check relative to the scores' scale
(heft/stages/merge.py).  Before those two fixes this chain failed at the merge (an absolute
tolerance against bf16 rounding) and then at the ReFT stage (no bf16 ``orgqr``).
The ``gpu`` test repeats it on CUDA when a GPU is there (``pytest -m gpu``).
"""
import pytest
import torch
from safetensors import safe_open

from heft.modeling import models
from heft.store.artifacts import ArtifactStore
from heft.run.execute import run_pipeline


def dtypes(path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return {str(f.get_slice(k).get_dtype()).lower() for k in f.keys()}


def run_bf16_chain(keyword_config, root) -> None:
    cfg = keyword_config(root, model={"dtype": "bfloat16"})  # tests/test_pipeline.py's task, in bf16
    out = run_pipeline(cfg)
    store = ArtifactStore(cfg.artifact_root)

    def path(name, *rel):
        return store.local_path(out[name]).joinpath(*rel)
    # learns the keyword task in bf16 as in float32 (tests/test_pipeline.py), majority ~50%
    assert out["eval:lora"].metrics["accuracy"] > 0.85
    assert out["eval:heft"].metrics["accuracy"] > 0.85
    # the merge's check ran in float32 (inside its tolerance), then the weights were rounded
    # to bf16 once: that rounding moved the outputs (> 0), as bf16 storage must
    assert out["merge"].metrics["merge_rel_diff"] < 1e-4
    assert 0 < out["merge"].metrics["merge_dtype_rounding"] < 0.1
    assert dtypes(path("merge", "model", "model.safetensors")) == {"bf16"}
    assert "f32" in dtypes(next(path("lora").rglob("adapter_model.safetensors")))  # peft's float32 adapter
    # the intervention: float32, orthonormal to float32 precision, and it changes the scores
    assert dtypes(path("reft", "intervention.safetensors")) == {"f32"}
    assert out["reft"].metrics["rotation_orthonormality_error"] < 1e-5
    assert out["reft"].metrics["intervention_mean_abs_score_change"] > 1e-3


@pytest.mark.long  # 31 s: the whole chain; tests/test_cpu_autocast.py keeps bf16 training in the default tier
def test_heft_chain_in_bfloat16(keyword_config, tmp_path):
    run_bf16_chain(keyword_config, tmp_path)


@pytest.mark.gpu
def test_heft_chain_in_bfloat16_on_cuda(keyword_config, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    assert models.device().type == "cuda"
    torch.cuda.reset_peak_memory_stats()
    run_bf16_chain(keyword_config, tmp_path)
    assert torch.cuda.max_memory_allocated() > 0  # the stages really ran on the GPU
