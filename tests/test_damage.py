"""No corrupt or stale result is ever served: same-size corruption of a cached artifact or of a
local copy of a remote one, a corrupt epoch checkpoint, a replaced base model, and damaged
meta.json or safetensors headers.  Each case asserts what the user gets back (the rebuilt
artifact, the original metrics) and that the damaged copy was set aside, not read."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from heft.config import LoraConfig
from heft.run.execute import run_pipeline
from heft.store.artifacts import ArtifactStore


def flip(path: Path, offset: int = -8) -> None:
    """Overwrite 4 bytes in place: the size stays the same, only the sha256 can tell."""
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = bytes(b ^ 0xFF for b in data[offset:offset + 4])
    path.write_bytes(bytes(data))


def drop(root: Path, stage: str) -> None:
    shutil.rmtree(root / stage)


@pytest.fixture
def first(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "art", mode="lora-only")
    return cfg, run_pipeline(cfg)


@pytest.mark.parametrize("stage,rel", [("merge", "model/model.safetensors"),
                                       ("lora", "adapter/adapter_model.safetensors")])
def test_same_size_corruption_is_rebuilt_and_the_original_results_return(first, stage, rel):
    cfg, out = first
    root = Path(cfg.artifact_root)
    flip(root / stage / out[stage].key / rel)
    drop(root, "evaluate")  # the evaluations must read the weights again
    again = run_pipeline(cfg)
    assert again[stage].meta["build"]["id"] != out[stage].meta["build"]["id"]  # rebuilt, not served
    for name in ("eval:lora", "eval:merged"):
        assert again[name].metrics == out[name].metrics
    trashed = list((root / ".trash").iterdir())
    assert len(trashed) == 1 and trashed[0].name.startswith(f"{stage}-{out[stage].key}")


def test_a_corrupt_local_copy_of_a_remote_artifact_is_downloaded_again(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HEFT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny_config(f"memory://damage-{tmp_path.name}", mode="lora-only")
    out = run_pipeline(cfg)
    store = ArtifactStore(cfg.artifact_root)
    copy = store.local_path(out["merge"]) / "model" / "model.safetensors"
    flip(copy)
    folder = store.open(out["merge"])  # checked: the bad copy is replaced from the object store
    assert store.content_problem(out["merge"], folder) is None
    assert store.find("merge", out["merge"].key).meta["build"] == out["merge"].meta["build"]  # not rebuilt


def test_a_corrupt_checkpoint_is_not_resumed_from(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "art", mode="lora-only", lora=LoraConfig(epochs=3, lr=1e-2))
    out = run_pipeline(cfg)
    root = Path(cfg.artifact_root)
    (epoch3,) = root.glob("checkpoints/lora/*/epoch-0003")
    flip(epoch3 / "trainable.safetensors")
    for stage in ("lora", "merge", "evaluate"):
        drop(root, stage)
    again = run_pipeline(cfg)
    assert again["lora"].metrics["resumed_from_epoch"] == 2  # the damaged epoch 3 was set aside
    adapter = "adapter/adapter_model.safetensors"
    assert again["lora"].meta["files"][adapter]["sha256"] == out["lora"].meta["files"][adapter]["sha256"]
    assert again["eval:merged"].metrics == out["eval:merged"].metrics


def test_a_replaced_base_model_gets_new_keys(tiny_config, tmp_path):
    from tiny_models import tiny_llama
    model = tiny_llama(tmp_path / "model", seed=0)
    cfg = tiny_config(tmp_path / "art", mode="lora-only")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=str(model)))
    before = run_pipeline(cfg)
    other = tiny_llama(tmp_path / "other", seed=1)
    shutil.copy(other / "model.safetensors", model / "model.safetensors")  # same folder, new weights
    after = run_pipeline(cfg)
    assert after["base"].key != before["base"].key and after["lora"].key != before["lora"].key
    assert after["data"].key == before["data"].key
    fresh = run_pipeline(dataclasses.replace(cfg, artifact_root=str(tmp_path / "fresh")))
    assert after["eval:merged"].metrics == fresh["eval:merged"].metrics


@pytest.mark.parametrize("damage", ["truncated", "empty", "null", "empty object", "header byte"])
def test_a_damaged_meta_json_or_header_is_set_aside_and_rebuilt(first, damage, caplog):
    cfg, out = first
    root = Path(cfg.artifact_root)
    meta = root / "lora" / out["lora"].key / "meta.json"
    if damage == "truncated":
        meta.write_text(meta.read_text()[:100])
    elif damage == "empty":
        meta.write_text("")
    elif damage == "null":
        meta.write_text("null")
    elif damage == "empty object":
        meta.write_text("{}")
    else:
        flip(root / "lora" / out["lora"].key / "adapter" / "adapter_model.safetensors", offset=10)
        drop(root, "merge")
        drop(root, "evaluate")
    with caplog.at_level("WARNING"):
        again = run_pipeline(cfg)
    assert f"lora/{out['lora'].key}" in caplog.text and "set aside" in caplog.text  # the artifact is named
    assert again["eval:merged"].metrics["accuracy"] == out["eval:merged"].metrics["accuracy"]
    assert json.loads(meta.read_text())["key"] == out["lora"].key  # a complete record again
    assert any(p.name.startswith(f"lora-{out['lora'].key}") for p in (root / ".trash").iterdir())


# every artifact kind and its downstream: dropped so that a rerun must read the damaged one
EVERYTHING = ("lora", "merge", "reft", "evaluate", "checkpoints")
DOWNSTREAM = {"data": EVERYTHING, "base": EVERYTHING, "lora": ("merge", "reft", "evaluate"),
              "merge": ("reft", "evaluate"), "reft": ("evaluate",), "evaluate": ()}


def injection_targets(root: Path) -> list[tuple[str, Path]]:
    """(kind, file) for every file of every artifact and checkpoint epoch except meta.json."""
    out = []
    for meta in sorted(root.glob("*/*/meta.json")) + sorted(root.glob("checkpoints/*/*/epoch-*/meta.json")):
        kind = "checkpoint:" + meta.parts[-4] if "checkpoints" in meta.parts else meta.parts[-3]
        out += [(kind, meta.parent / rel) for rel in json.loads(meta.read_text())["files"]]
    return out


def differs(art, ref) -> bool:
    """Not what the uninterrupted run gave: another evaluation result, or other trained tensors
    (training is bit-reproducible on the CPU; the timings in a stage's metrics are not)."""
    if art.stage == "evaluate":
        return art.metrics != ref.metrics
    tensors = {rel: f["sha256"] for rel, f in ref.meta["files"].items() if rel.endswith(".safetensors")}
    return {rel: art.meta["files"].get(rel, {}).get("sha256") for rel in tensors} != tensors


@pytest.mark.slow  # one pipeline rerun per file of the store: 27 reruns, under 2 min
def test_same_size_corruption_of_every_file_is_never_served(tiny_config, tmp_path):
    """Fault injection: 4 bytes flipped in place (same size) at a seeded offset in every file
    of every artifact kind and of every checkpoint epoch, one at a time in a copy of a
    finished store. What reads it next (the rerun's stages, then a consumer opening every
    artifact it returned, as heft.load and the study do) must find the damage, and what comes
    back is the reference: the same metrics, every returned file matching its sha256."""
    import random
    from heft.store.damage import DamagedArtifact
    cfg = tiny_config(tmp_path / "ref", lora=LoraConfig(epochs=2, lr=1e-2))
    reference = run_pipeline(cfg)
    rng, rows = random.Random(0), []
    for i, (kind, path) in enumerate(injection_targets(tmp_path / "ref")):
        root = tmp_path / f"inject{i}"
        shutil.copytree(tmp_path / "ref", root)
        target = root / path.relative_to(tmp_path / "ref")
        if target.stat().st_size < 4:
            continue
        flip(target, offset=rng.randrange(target.stat().st_size - 3))
        stage = kind.split(":")[-1]
        for gone in DOWNSTREAM[stage] + ((stage,) if kind.startswith("checkpoint:") else ()):
            shutil.rmtree(root / gone, ignore_errors=True)
        if kind.startswith("checkpoint:"):  # the damaged epoch is the latest: the one a resume reads
            epoch = target.parent if target.parent.name.startswith("epoch-") else target.parents[1]
            for later in epoch.parent.glob("epoch-*"):
                if later.name > epoch.name:
                    shutil.rmtree(later)
        here = dataclasses.replace(cfg, artifact_root=str(root))
        got, reruns = run_pipeline(here), 0
        store = ArtifactStore(str(root))
        while True:  # a consumer opens every returned artifact before reading it
            try:
                for art in got.values():
                    store.open(art)
                break
            except DamagedArtifact:
                reruns += 1
                assert reruns <= 2, f"{kind} {target.name}: still damaged after a rebuild"
                got = run_pipeline(here)
        trashed = list(root.rglob(".trash/*"))  # set aside: beside the root or a checkpoint folder
        served = [n for n, art in got.items() if store.verify(art) is not None or differs(art, reference[n])]
        rows.append({"kind": kind, "file": target.name, "detected": bool(trashed), "served_corrupt": served})
    print("\ninjections by kind (detected / injected, corrupt results served):")
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        print(f"  {kind}: {sum(r['detected'] for r in mine)}/{len(mine)}, "
              f"{sum(bool(r['served_corrupt']) for r in mine)}")
    assert {r["kind"] for r in rows} >= {"data", "lora", "merge", "reft", "evaluate", "checkpoint:lora",
                                         "checkpoint:reft"}
    assert [r for r in rows if r["served_corrupt"]] == []
    assert all(r["detected"] for r in rows), [r for r in rows if not r["detected"]]
