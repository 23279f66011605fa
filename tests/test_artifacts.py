import json

import pytest

from heft.artifacts import ArtifactStore, stage_key
from heft.config import LoraConfig, ReftConfig


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
    with store.build("lora", key) as tmp:
        (tmp / "adapter").mkdir()
        (tmp / "adapter" / "w.bin").write_bytes(b"123")
        assert store.find("lora", key) is None  # nothing visible before publish
        art = store.publish(tmp, "lora", key, LoraConfig(), None, {"acc": 0.5}, {"weights": "x"})
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
        with store.build("reft", "k") as tmp:
            (tmp / "x").write_text("partial")
            raise RuntimeError("killed")
    assert store.find("reft", "k") is None
    assert not list((tmp_path / ".tmp").iterdir())
