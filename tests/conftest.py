"""Shared fixtures: paths to ../shared (tests skip with a reason when it is absent),
a synthetic learnable BoolQ-like file, and isolated Prefect/MLflow/artifact roots."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HEFT_SYSTEM_METRICS_SECONDS", "1")  # test stages last seconds
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HEFT_SHARED", ROOT.parent / "shared"))
BOOLQ = SHARED / "data" / "boolq"
STORIES = SHARED / "models" / "stories260K"


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"offline material {path} is absent (it lives in ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def boolq_validation() -> Path:
    return need_shared(BOOLQ / "validation.jsonl")


@pytest.fixture(scope="session")
def stories() -> Path:
    return need_shared(STORIES)


@pytest.fixture(scope="session")
def keyword_data(tmp_path_factory) -> Path:
    """A BoolQ-shaped file whose label is decided by one word in the question: any working
    trainer gets near 100%, a broken one stays near the 50% majority rate."""
    rng = random.Random(0)
    subjects = ["the cat", "a dog", "the king", "my friend", "the river", "a bird", "the sun", "her mom"]
    rows = []
    for i in range(600):
        label = i % 2 == 0
        word = "happy" if label else "sad"
        # a distinct passage per row: no held-out row repeats a training row (the leakage check)
        rows.append({"question": f"is {rng.choice(subjects)} {word} today",
                     "passage": f"A short story, number {i}.", "label": label})
    rng.shuffle(rows)
    path = tmp_path_factory.mktemp("keyword") / "keyword.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def keyword_builder(model_name: str, max_length: int, lora: dict, reft: dict, data: dict):
    """``build(root, model=None, **fields)``: a RunConfig on the keyword task for one model."""
    from heft.config import DataConfig, LoraConfig, ModelConfig, ReftConfig, RunConfig

    def build(root, model: dict | None = None, **fields):
        return RunConfig(**{
            "model": ModelConfig(name=model_name, max_length=max_length, **(model or {})),
            "data": DataConfig(**data), "lora": LoraConfig(**lora), "reft": ReftConfig(**reft),
            "artifact_root": str(root), **fields})
    return build


@pytest.fixture(scope="session")
def keyword_config(stories, keyword_data):
    """``keyword_config(root, **fields)``: a RunConfig that learns the keyword task on
    stories260K (LoRA, HEFT and ReFT-only all above 85% when the trainers work)."""
    return keyword_builder(str(stories), 64, dict(epochs=3, lr=3e-3, batch_size=16),
                           dict(epochs=3, lr=1e-2, layer=3, batch_size=16),
                           dict(source=str(keyword_data), holdout_size=100, valid_size=60, max_train=240))


@pytest.fixture(scope="module")
def harness():
    """A throw-away Prefect server and database for the flow tests of one module."""
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 3-block random Llama with a word-level tokenizer (tests/tiny_models.py): no ../shared."""
    from tiny_models import tiny_llama as make
    return make(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-block random BERT with a WordPiece vocabulary (tests/tiny_models.py): no ../shared."""
    from tiny_models import tiny_bert as make
    return make(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_config(tiny_llama, keyword_data):
    """``tiny_config(root, **fields)``: the keyword task on the tiny Llama (fast, no ../shared)."""
    return keyword_builder(str(tiny_llama), 32, dict(epochs=2, lr=1e-2, batch_size=16),
                           dict(epochs=2, lr=1e-2, layer=1, batch_size=16),
                           dict(source=str(keyword_data), holdout_size=100, valid_size=60, max_train=240))
