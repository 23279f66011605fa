"""What the training benchmarks share: a fresh artifact root with the data and base
stages built, the tokenized train split, and the ratio summary of alternating runs."""
from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heft.data.batching import Encoded  # noqa: E402
from heft.plan import plan  # noqa: E402
from heft.presets import load_run_config  # noqa: E402
from heft.stages import run_step  # noqa: E402
from heft.stages.inputs import StageInputs  # noqa: E402
from heft.store.artifacts import Artifact, ArtifactStore  # noqa: E402


@dataclass
class Setup:
    work: Path
    cfg: Any
    store: ArtifactStore
    base: Artifact
    inputs: StageInputs
    tok: Any
    enc: Encoded     # the training split
    empty: Encoded   # no validation rows: train() then skips the per-epoch validation pass


def prepare(preset: str, overrides: list[str]) -> Setup:
    work = Path(tempfile.mkdtemp(prefix="heft-bench-"))
    cfg = load_run_config(preset, [f"artifact_root={work}/art", *overrides])
    store = ArtifactStore(cfg.artifact_root)
    steps = plan(cfg)
    base = run_step(steps["base"], run_step(steps["data"], None, store), store)
    inputs = StageInputs.of(base, store)
    tok = inputs.tokenizer()
    enc = inputs.encoded("train", tok)
    empty = dataclasses.replace(enc, input_ids=[], labels=[], token_type_ids=None)
    return Setup(work, cfg, store, base, inputs, tok, enc, empty)


def ratios(num: list[float], den: list[float]) -> tuple[float, float]:
    """(median of the paired ratios num/den, ratio of the minima) of alternating runs."""
    return statistics.median(a / b for a, b in zip(num, den)), min(num) / min(den)
