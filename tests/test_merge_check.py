"""The merge stage's own check: a merge that loses the LoRA update is refused before anything
is saved, judged on the full outputs (every token, the whole vocabulary), not the two answer
logits alone."""
import pytest

from heft.plan import plan
from heft.stages import run_step
from heft.store.artifacts import ArtifactStore


def test_a_merge_that_drops_the_update_is_refused_and_not_saved(tiny_config, tmp_path, monkeypatch):
    from peft.tuners.tuners_utils import BaseTuner
    cfg = tiny_config(tmp_path, mode="lora-only")
    store, steps = ArtifactStore(cfg.artifact_root), plan(cfg)
    done = None
    for name in ("data", "base", "lora"):
        done = run_step(steps[name], done, store)
    monkeypatch.setattr(BaseTuner, "merge_and_unload", lambda self, **kw: self.unload())  # the update is lost
    with pytest.raises(FloatingPointError, match=r"merge changed the model's outputs by .* refusing to save"):
        run_step(steps["merge"], done, store)
    assert store.find("merge", steps["merge"].key) is None
    monkeypatch.undo()
    merged = run_step(steps["merge"], done, store)
    assert merged.metrics["merge_rel_diff"] < 1e-4 and merged.metrics["merge_checked_values"] > 1000
