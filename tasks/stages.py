"""One Prefect task per heft stage.

The task cache key is heft's own artifact key (stage config + parent key + format
version) plus the artifact root, never the flow-run id and never a model object, so
Prefect reports ``Cached`` exactly when heft would reuse the artifact.  Results are
persisted (small pickled ``Artifact`` records; the weights live in the artifact store).
"""
from __future__ import annotations

import hashlib
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from heft.artifacts import Artifact, ArtifactStore
from heft.pipeline import key_of, run_stage
from heft.tracking import Tracker


def cache_key(stage: str, cfg: Any, parent: Artifact | None, root: str) -> str:
    root_hash = hashlib.sha256(root.encode()).hexdigest()[:8]
    return f"heft-{stage}-{key_of(stage, cfg, parent)}-{root_hash}"


def _stage_task(stage: str, retries: int):
    def run(cfg: Any, parent: Artifact | None, root: str, tracker: Tracker | None = None) -> Artifact:
        store = ArtifactStore(root)
        on_epoch = tracker.epoch_logger() if tracker else None
        art = run_stage(stage, cfg, parent, store, on_epoch=on_epoch)
        get_run_logger().info("%s artifact %s at %s", stage, art.key, art.uri or "(virtual)")
        return art

    run.__name__ = f"{stage}_stage"
    run.__doc__ = f"Run heft's {stage} stage (or return its finished artifact)."
    return task(
        run, name=stage, retries=retries, retry_delay_seconds=[5, 30][:retries],
        cache_key_fn=lambda ctx, p: cache_key(stage, p["cfg"], p["parent"], p["root"]),
        persist_result=True,
    )


# Training stages are not retried: a failure there is a bug or a bad config, not a blip.
data_task = _stage_task("data", retries=2)
base_task = _stage_task("base", retries=2)
lora_task = _stage_task("lora", retries=0)
merge_task = _stage_task("merge", retries=1)
reft_task = _stage_task("reft", retries=0)
evaluate_task = _stage_task("evaluate", retries=1)
STAGE_TASKS = {"data": data_task, "base": base_task, "lora": lora_task, "merge": merge_task,
               "reft": reft_task, "evaluate": evaluate_task}
