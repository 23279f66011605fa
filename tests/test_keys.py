"""Cache keys hash declared fields: pinned golden values, excluded fields leave them alone,
every included field moves them, and one run computes each key exactly once."""
import collections
import dataclasses
import json

import pytest

from heft.config import DataConfig, EvalConfig, LoraConfig, MergeConfig, ModelConfig, ReftConfig
from heft.store import keys
from heft.store.keys import FORMAT_VERSION, canonical_json, key_fields, stage_key

# Golden keys of default configs on parent "p" (format 3).  If one changes, every cache
# built before is invalidated: bump FORMAT_VERSION on purpose, then update these.
GOLDEN = {
    "lora": (LoraConfig(), "ec9395114d96ad0d59d8"),
    "reft": (ReftConfig(), "bf1b1344955cd9b3b188"),
    "merge": (MergeConfig(), "c8c06b5d122e7d6437ef"),
    "evaluate": (EvalConfig(), "c16a2d829fff7b7649ef"),
}
# a different valid value for every field of every stage config
OTHER = {"name": "other/model", "family": "causal-lm", "dtype": "bfloat16", "pooling": "mean",
         "schedule": "constant", "positions": "l1", "format": "question", "source": "other.jsonl",
         "eval_source": "dev.jsonl", "gguf_file": "model.gguf", "target_modules": ("q_proj",),
         "autocast": "off", "holdout_size": 500, "subset": "main",
         "eval_split": "test"}
CONFIGS = [ModelConfig(), DataConfig(), LoraConfig(), MergeConfig(), ReftConfig(), EvalConfig()]


def changed(cfg, f):
    value = getattr(cfg, f.name)
    if f.name in OTHER and OTHER[f.name] != value:
        new = OTHER[f.name]
    elif isinstance(value, bool):
        new = not value
    elif isinstance(value, int):
        new = value + 1
    elif isinstance(value, float):
        new = value / 2 if value else 0.01
    else:
        raise AssertionError(f"no alternative value for {type(cfg).__name__}.{f.name}")
    return dataclasses.replace(cfg, **{f.name: new})


def test_golden_keys_of_default_configs():
    got = {stage: stage_key(stage, cfg, "p") for stage, (cfg, _) in GOLDEN.items()}
    assert got == {stage: key for stage, (_, key) in GOLDEN.items()}
    assert FORMAT_VERSION == 3


def test_key_hashes_field_values_not_the_repr():
    payload = keys.key_payload("lora", LoraConfig(), "p")
    assert payload["config"]["rank"] == 8 and payload["config"]["target_modules"] == []
    assert "gradient_checkpointing" not in payload["config"]
    assert "LoraConfig" not in canonical_json(payload)  # no class name, no repr anywhere
    # another class with the same key fields in another order: the same key
    # (the key fields of a default config: "unless-default" fields are left out at their default)
    fields = {f.name: getattr(LoraConfig(), f.name) for f in dataclasses.fields(LoraConfig)
              if f.metadata.get("key", True) is True}
    shuffled = dataclasses.make_dataclass("Shuffled", [(n, type(v), v) for n, v in reversed(fields.items())],
                                          frozen=True)
    assert stage_key("lora", shuffled(), "p") == stage_key("lora", LoraConfig(), "p")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_included_field_changes_the_key_and_excluded_ones_do_not(cfg):
    base = stage_key("x", cfg, "p")
    for f in dataclasses.fields(cfg):
        other = stage_key("x", changed(cfg, f), "p")
        if f.metadata.get("key", True):
            assert other != base, f"{type(cfg).__name__}.{f.name} is not in the key"
        else:
            assert other == base, f"{type(cfg).__name__}.{f.name} should not be in the key"


def test_meta_json_can_reproduce_the_key(tiny_config, tmp_path):
    from heft.run.execute import run_pipeline
    out = run_pipeline(tiny_config(tmp_path, mode="base"))
    for art in out.values():
        meta = json.loads((tmp_path / art.stage / art.key / "meta.json").read_text())
        assert keys.digest(meta["keyed"]) == art.key


def test_one_run_computes_each_key_exactly_once(tiny_config, tmp_path, monkeypatch, harness):
    """Validation, the flow, the tasks, the lock and the stage functions read the planned key:
    a reintroduced call site anywhere shows up as a second count of that stage."""
    from flows.heft_flow import heft
    counts = collections.Counter()
    real = keys.key_payload

    def counted(stage, *args, **kwargs):
        counts[stage] += 1
        return real(stage, *args, **kwargs)
    monkeypatch.setattr(keys, "key_payload", counted)
    cfg = tiny_config(tmp_path / "art", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", mode="heft",
                      lora=LoraConfig(epochs=1, lr=1e-2), reft=ReftConfig(epochs=1, lr=1e-2, layer=1))
    heft(cfg)
    assert counts.pop("lora-trajectory") == counts.pop("reft-trajectory") == 1  # checkpoint folders
    assert dict(counts) == {"data": 1, "base": 1, "lora": 1, "merge": 1, "reft": 1, "evaluate": 3}


def test_key_fields_reads_nested_dataclasses():
    from heft.config import RunConfig
    nested = key_fields(RunConfig(artifact_root="/x", tracking_uri="sqlite:///x.db", experiment="e"))
    assert nested["lora"]["rank"] == 8 and "gradient_checkpointing" not in nested["lora"]
