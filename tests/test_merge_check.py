"""The merge stage's own check: a merge that loses or mis-scales the LoRA update is refused
before anything is saved, judged on the full outputs (every token, the whole vocabulary), not
the two answer logits alone, against base + adapter as the adapter's own forward computes it."""
import pytest
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTuner

from heft.plan import plan
from heft.progress import Progress
from heft.stages import Context, run_step
from heft.stages.merge import merge_lora
from heft.store.artifacts import ArtifactStore

REAL_DELTA, REAL_MERGE = LoraLinear.get_delta_weight, BaseTuner.merge_and_unload


@pytest.fixture(scope="module")
def trained(tiny_config, tmp_path_factory):
    """(store, merge step, lora artifact): one LoRA stage for the whole module."""
    cfg = tiny_config(tmp_path_factory.mktemp("merge-check"), mode="lora-only")
    assert (cfg.lora.alpha, cfg.lora.rank) == (32, 8)  # alpha/r = 4: alpha alone is 8x the update
    store, steps = ArtifactStore(cfg.artifact_root), plan(cfg)
    done = None
    for name in ("data", "base", "lora"):
        done = run_step(steps[name], done, store)
    return store, steps["merge"], done


def test_a_merge_that_drops_the_update_is_refused_and_not_saved(trained, monkeypatch):
    store, step, lora = trained
    monkeypatch.setattr(BaseTuner, "merge_and_unload", lambda self, **kw: self.unload())  # the update is lost
    with pytest.raises(FloatingPointError, match=r"merge changed the model's outputs by .* refusing to save"):
        run_step(step, lora, store)
    assert store.find("merge", step.key) is None


def test_a_correct_merge_passes_its_check(trained, tmp_path):
    """The stage function itself, its files in tmp_path (nothing published: the other tests
    need the merge unbuilt in the store)."""
    store, step, lora = trained
    built = merge_lora(step.config, lora, Context(step, store, tmp_path, Progress()))
    assert built.metrics["merge_rel_diff"] < 1e-4 and built.metrics["merge_checked_values"] > 1000
    assert built.metrics["merge_dtype_rounding"] == 0.0  # float32: nothing rounded
    assert (tmp_path / "model" / "model.safetensors").exists()


def scaled_by_r(self, adapter):  # the merged weights W + alpha B A: alpha instead of alpha/r
    return REAL_DELTA(self, adapter) * self.r[adapter]


def scaling_set_to_alpha(self, **kw):  # the model being merged re-scaled on the way, then merged
    for module in self.modules():
        if hasattr(module, "scaling") and hasattr(module, "lora_alpha"):
            module.scaling = {k: module.lora_alpha[k] for k in module.scaling}
    return REAL_MERGE(self, **kw)


@pytest.mark.parametrize("target,name,bug", [(LoraLinear, "get_delta_weight", scaled_by_r),
                                             (BaseTuner, "merge_and_unload", scaling_set_to_alpha)])
def test_a_merge_that_mis_scales_the_update_is_refused(target, name, bug, trained, tmp_path, monkeypatch):
    """The stage function itself (no cache in between): its reference is the unmerged adapter's
    forward pass, so a merge scaled by alpha instead of alpha/r differs from it by far."""
    store, step, lora = trained
    monkeypatch.setattr(target, name, bug)
    with pytest.raises(FloatingPointError, match=r"merge changed the model's outputs by .* refusing to save"):
        merge_lora(step.config, lora, Context(step, store, tmp_path, Progress()))
    assert not (tmp_path / "model").exists()
