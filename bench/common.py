"""What the training benchmarks share: a fresh artifact root with the data and base
stages built, the tokenized train split, the ratio summary of alternating runs, peak-RSS
sampling and the FLOPs per trained token of a frozen base with small adapters."""
from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile
import threading
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
    enc = inputs.sequences("train", tok)
    empty = dataclasses.replace(enc, input_ids=[], labels=[], token_type_ids=None)
    return Setup(work, cfg, store, base, inputs, tok, enc, empty)


def objective(inputs: StageInputs, tok, enc: Encoded):
    """The training objective of a label task on ``enc``, without validation."""
    from heft.modeling import models
    from heft.modeling.training import Objective
    loss = models.label_loss(inputs.family, inputs.model_cfg.pooling, inputs.answer_ids(tok))
    return Objective(enc, loss, lambda model: None, tok.pad_token_id, inputs.precision)


def ratios(num: list[float], den: list[float]) -> tuple[float, float]:
    """(median of the paired ratios num/den, ratio of the minima) of alternating runs."""
    return statistics.median(a / b for a, b in zip(num, den)), min(num) / min(den)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """``with PeakRSS() as rss: ...; rss.peak_mb``: this process's peak resident memory while
    the block runs, sampled every 20 ms on a thread (ru_maxrss cannot be reset, and the set-up
    before the block may already have peaked above the work inside it)."""

    def __enter__(self):
        self.peak_mb, self._done = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.02):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def adapter_flops_per_token(n_matmul: float, tokens: float, layers: int, d: int,
                            backward_share: float = 1.0) -> float:
    """Training FLOPs per token with the base frozen, N = ``n_matmul`` parameters of the blocks'
    matmuls, n = ``tokens`` per row, L blocks, d the hidden size:
      forward 2N + 4nLd (the matmuls, then attention scores and values);
      backward 2N + 8nLd, activation gradients only (frozen weights get no weight gradient;
      a LoRA adapter's own are r/d of one and ignored), times ``backward_share``: the part of
      the depth the gradient flows through (ReFT at layer k stops at k: (L-1-k)/L).
    With the whole backward: 4N + 12nLd."""
    return 2 * n_matmul + 4 * tokens * layers * d + backward_share * (2 * n_matmul + 8 * tokens * layers * d)
