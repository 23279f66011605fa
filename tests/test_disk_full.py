"""Disk full while heft writes: a checkpoint (torch.save, safetensors) or a stage's files and
their publish.  The error names the file and the space left and needed, instead of torch's
"unexpected pos 61440 vs 61392", and nothing half-written is published."""
from __future__ import annotations

import errno
import shutil
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch

from heft.config import LoraConfig
from heft.store.artifacts import ArtifactStore, Built
from heft.store.checkpoints import EpochCheckpoints

TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 61440 vs 61392"
Usage = namedtuple("Usage", "total used free")


def training_state():
    param = torch.nn.Parameter(torch.zeros(256))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(256)
    optimizer.step()  # AdamW state: two moments of 256 floats
    return {"w": param}, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def disk(monkeypatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - free, free))


@pytest.fixture
def checkpoints(tmp_path):
    return EpochCheckpoints(ArtifactStore(str(tmp_path / "art")), "lora", LoraConfig(), "p" * 20)


def test_disk_full_in_torch_save_of_a_checkpoint_names_the_path_and_the_space(checkpoints, tmp_path,
                                                                             monkeypatch):
    def full(obj, f, *args, **kwargs):
        open(f, "wb").write(b"\0" * 61392)  # torch writes until the disk refuses, then raises
        raise RuntimeError(TORCH_FULL)
    monkeypatch.setattr(torch, "save", full)
    disk(monkeypatch, free=512)
    with pytest.raises(OSError) as err:
        checkpoints.save(1, *training_state(), history=[])
    msg = str(err.value)
    assert err.value.errno == errno.ENOSPC and "no space left" in msg
    assert "state.pt" in msg and str(tmp_path / "art") in msg, msg
    assert "512 B free" in msg and "needs about" in msg, msg
    assert checkpoints.epochs() == []  # nothing half-published
    assert list((tmp_path / "art" / ".tmp").iterdir()) == []


def test_the_same_torch_error_with_space_left_is_not_called_disk_full(checkpoints, monkeypatch):
    def broken(obj, f, *args, **kwargs):
        raise RuntimeError(TORCH_FULL)
    monkeypatch.setattr(torch, "save", broken)
    disk(monkeypatch, free=10**9)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        checkpoints.save(1, *training_state(), history=[])


def test_disk_full_while_a_stage_writes_or_publishes_names_the_path(tmp_path, monkeypatch):
    store = ArtifactStore(str(tmp_path / "art"))
    step = SimpleNamespace(stage="merge", key="m" * 20, parent_key=None, config=LoraConfig(), inputs={})
    disk(monkeypatch, free=0)

    def build(folder):
        (folder / "model").mkdir()
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model" / "model.safetensors"))
    with pytest.raises(OSError, match=r"no space left .*model\.safetensors.*0 B free"):
        store.get_or_build(step, None, build)
    real = ArtifactStore.publish

    def publish_full(self, tmp, stage, key, meta, **kwargs):  # the manifest or meta.json write fails
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ArtifactStore, "publish", publish_full)
    with pytest.raises(OSError, match=rf"no space left .*{tmp_path / 'art'}.*0 B free"):
        store.get_or_build(step, None, lambda folder: Built())
    monkeypatch.setattr(ArtifactStore, "publish", real)
    assert store.find("merge", step.key) is None and list((tmp_path / "art" / ".tmp").iterdir()) == []
