import dataclasses

import pytest

from heft.config import LoraConfig, ReftConfig
from heft.store.artifacts import ArtifactStore
from heft.store.keys import stage_key


def meta(config, metrics=None, lineage=None) -> dict:
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return {"config": config, "metrics": metrics or {}, "lineage": lineage or {}}


def test_key_depends_on_config_and_parent_only():
    base = stage_key("lora", LoraConfig(), "p1")
    assert base == stage_key("lora", LoraConfig(), "p1")
    assert base != stage_key("lora", LoraConfig(rank=16), "p1")
    assert base != stage_key("lora", LoraConfig(), "p2")
    assert stage_key("reft", ReftConfig(layer=3), base) != stage_key("reft", ReftConfig(layer=4), base)


@pytest.mark.parametrize("root", ["local", "memory://heft-test"])
def test_publish_find_and_fetch(tmp_path, root):
    store = ArtifactStore(str(tmp_path / "art") if root == "local" else root)
    key = stage_key("lora", LoraConfig(), None)
    assert store.find("lora", key) is None
    with store.scratch("lora", key) as tmp:
        (tmp / "adapter").mkdir()
        (tmp / "adapter" / "w.bin").write_bytes(b"123")
        assert store.find("lora", key) is None  # nothing visible before publish
        art = store.publish(tmp, "lora", key, meta(LoraConfig(), {"acc": 0.5}, {"weights": "x"}))
    assert art.metrics == {"acc": 0.5} and art.meta["config"]["rank"] == 8
    assert store.find("lora", key).meta == art.meta
    assert (store.local_path(art) / "adapter" / "w.bin").read_bytes() == b"123"


def test_unfinished_entry_is_not_found(tmp_path):
    store = ArtifactStore(str(tmp_path))
    (tmp_path / "lora" / "abc").mkdir(parents=True)
    (tmp_path / "lora" / "abc" / "adapter.bin").write_bytes(b"half")
    assert store.find("lora", "abc") is None


def test_failed_build_leaves_nothing(tmp_path):
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(RuntimeError):
        with store.scratch("reft", "k") as tmp:
            (tmp / "x").write_text("partial")
            raise RuntimeError("killed")
    assert store.find("reft", "k") is None
    assert not list((tmp_path / ".tmp").iterdir())


def test_damaged_artifact_is_not_reused_and_is_replaced(tmp_path, caplog):
    store = ArtifactStore(str(tmp_path))

    def make(payload: bytes):
        with store.scratch("lora", "k1") as tmp:
            (tmp / "adapter.bin").write_bytes(payload)
            return store.publish(tmp, "lora", "k1", meta({"rank": 8}))

    art = make(b"x" * 100)
    assert art.meta["files"]["adapter.bin"]["size"] == 100 and store.verify(art) is None
    path = tmp_path / "lora" / "k1" / "adapter.bin"
    path.write_bytes(b"x" * 40)  # a truncated copy (e.g. a disk filled up during a sync)
    with caplog.at_level("WARNING"):
        assert store.find("lora", "k1") is None
    assert "adapter.bin has 40 bytes, expected 100" in caplog.text
    again = make(b"y" * 100)  # the rebuild replaces the damaged entry
    assert again is not None and (tmp_path / "lora" / "k1" / "adapter.bin").read_bytes() == b"y" * 100
    assert len(list((tmp_path / ".trash").iterdir())) == 1
    path.write_bytes(b"z" * 100)  # same size, other bytes: only the full check sees it
    assert store.find("lora", "k1") is not None
    assert "sha256 differs" in store.verify(store.find("lora", "k1"))
    path.unlink()
    assert store.find("lora", "k1") is None
