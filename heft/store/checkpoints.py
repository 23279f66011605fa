"""Per-epoch training checkpoints: resume an interrupted stage, and continue a shorter run.

A checkpoint after epoch k holds everything the next epoch depends on: the trainable
tensors, the optimizer and LR-scheduler state, the torch RNG state (dropout) and the
per-epoch history.  Batch order needs no state: ``train_batches`` seeds each epoch from
(seed, epoch).  So restoring epoch k and training on gives, on CPU, bit-for-bit the
same result as never having stopped.

Checkpoints live in the artifact store under ``checkpoints/<stage>/<trajectory key>/
epoch-NNNN/`` and are published like artifacts (temp folder, then rename / meta.json
last), so a checkpoint is either complete or invisible.

Which runs share a trajectory?  With ``schedule: linear`` the LR of step s is
``(total - s) / (total - warmup)``, so the first 3 epochs of a 20-epoch run differ from a
3-epoch run: the trajectory key includes ``epochs`` and checkpoints only serve a rerun of
the same config (resume).  With ``schedule: constant`` (warm-up counted in the first
epoch's steps, see heft.training.lr_lambda) the LR of step s does not depend on the
total, so the key leaves ``epochs`` out: a 5-epoch LoRA stage starts from the 3-epoch
stage's epoch-3 checkpoint, and a 3-epoch stage after a 5-epoch one trains nothing.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import re

import torch
from safetensors.torch import load_file, save_file

from heft.config import TrainConfig
from heft.store.artifacts import ArtifactStore, check_held
from heft.store.damage import DamagedArtifact
from heft.store.keys import stage_key
from heft.store.space import named_when_full, nbytes

EPOCH_RE = re.compile(r"^epoch-(\d{4})$")
log = logging.getLogger(__name__)


def prefix_stable(cfg: TrainConfig) -> bool:
    """True when the first k epochs do not depend on the total number of epochs."""
    return cfg.schedule == "constant"


def trajectory_key(stage: str, cfg: TrainConfig, parent_key: str) -> str:
    keyed = dataclasses.replace(cfg, epochs=0) if prefix_stable(cfg) else cfg
    return stage_key(f"{stage}-trajectory", keyed, parent_key)


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochCheckpoints:
    """The checkpoints of one training trajectory (stage config minus, maybe, epochs)."""

    def __init__(self, store: ArtifactStore, stage: str, cfg: TrainConfig, parent_key: str):
        self.store, self.cfg = store, cfg
        self.folder = f"checkpoints/{stage}/{trajectory_key(stage, cfg, parent_key)}"

    def epochs(self) -> list[int]:
        """Completed checkpoint epochs, ascending (entries without meta.json are ignored)."""
        path = f"{self.store.base}/{self.folder}"
        if not self.store.fs.exists(path):
            return []
        found = []
        for entry in self.store.fs.ls(path, detail=False):
            m = EPOCH_RE.match(entry.rstrip("/").rsplit("/", 1)[-1])
            if m and self.store.find(self.folder, m.group(0)) is not None:
                found.append(int(m.group(1)))
        return sorted(found)

    def latest(self, max_epoch: int) -> int:
        """The last checkpointed epoch <= max_epoch (0 = none)."""
        return max([e for e in self.epochs() if e <= max_epoch], default=0)

    def save(self, epoch: int, tensors: dict[str, torch.Tensor], optimizer, scheduler,
             history: list[dict]) -> None:
        key = f"epoch-{epoch:04d}"
        check_held()  # a build whose lease ran out stops at its next epoch, not after the last one
        if self.store.find(self.folder, key) is not None:
            return  # the same trajectory already reached this epoch (identical by construction)
        what = f"checkpoint of epoch {epoch} under {self.store.root}/{self.folder}"
        with self.store.scratch("checkpoint", key) as tmp:
            # a full disk is named with the space left and needed (torch's own error says
            # "unexpected pos 61440 vs 61392"); the scratch folder goes, nothing is published
            trainable = {n: t.detach().cpu().contiguous() for n, t in tensors.items()}
            with named_when_full(tmp / "trainable.safetensors", what, nbytes(trainable)):
                save_file(trainable, str(tmp / "trainable.safetensors"))
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": _rng_state()}
            with named_when_full(tmp / "state.pt", what, nbytes(state)):
                torch.save(state, tmp / "state.pt")
            with named_when_full(tmp, f"publishing the {what}"):
                self.store.publish(tmp, self.folder, key, {
                    "stage": "checkpoint", "key": key, "config": dataclasses.asdict(self.cfg),
                    "metrics": {"epoch": epoch, "history": history}, "lineage": {}})

    def restore_latest(self, max_epoch: int, tensors: dict[str, torch.Tensor], optimizer,
                       scheduler) -> tuple[int, list[dict]]:
        """Restore the last good checkpoint epoch <= max_epoch: (epoch, its history), (0, [])
        when there is none.  A checkpoint whose files do not match their sha256 is set aside
        and the epoch before it is tried: a corrupt checkpoint is never resumed from."""
        for epoch in sorted((e for e in self.epochs() if e <= max_epoch), reverse=True):
            try:
                return epoch, self.restore(epoch, tensors, optimizer, scheduler)
            except DamagedArtifact as e:
                log.warning("%s; resuming from an earlier epoch", e)
        return 0, []

    def restore(self, epoch: int, tensors: dict[str, torch.Tensor], optimizer, scheduler) -> list[dict]:
        """Load epoch's state into the live tensors/optimizer/scheduler; return its history."""
        art = self.store.find(self.folder, f"epoch-{epoch:04d}")
        if art is None:
            raise DamagedArtifact(self.folder, f"epoch-{epoch:04d}", "no readable meta.json")
        folder = self.store.open(art)  # sha256-checked, set aside if damaged
        saved = load_file(str(folder / "trainable.safetensors"))
        missing = sorted(set(tensors) ^ set(saved))
        if missing:
            raise ValueError(f"checkpoint {art.uri} does not match the model: {missing[:5]}")
        with torch.no_grad():
            for name, live in tensors.items():
                live.copy_(saved[name])
        state = torch.load(io.BytesIO((folder / "state.pt").read_bytes()), weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        return list(art.metrics["history"])
