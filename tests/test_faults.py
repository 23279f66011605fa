"""kill -9 at random points of each stage, then rerun on the same artifact root.

Each injection starts a fresh pipeline process (stories260K + the keyword task, HEFT with
3 LoRA and 3 ReFT epochs), waits until the target stage starts, sleeps a fraction of that
stage's measured duration (random in 0-120% in the slow tier), and SIGKILLs the process.  The rerun must
complete; afterwards every artifact under the root must pass the full sha256 check (no
corrupt entry was published, so none could be reused), and the final metrics must equal
those of an uninterrupted run, also when training resumed from an epoch checkpoint.
Default tier: 3 injections; `make test-slow`: 25 (5 per stage).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heft.store.artifacts import META, ArtifactStore

ROOT = Path(__file__).resolve().parents[1]
DRIVER = r"""
import json, sys, time
from heft.plan import plan
from heft.presets import load_run_config
from heft.progress import Progress
from heft.stages import run_step
from heft.store.artifacts import ArtifactStore
cfg = load_run_config("deployments/stories-boolq.yaml", sys.argv[1:])
store = ArtifactStore(cfg.artifact_root)
steps, done = plan(cfg).steps, {}
for step in steps:
    print(f"START {step.stage} {time.monotonic():.3f}", flush=True)
    events = Progress(on_epoch=lambda e, m, s=step.stage: print(f"EPOCH {s} {e}", flush=True))
    done[step.key] = run_step(step, done.get(step.parent_key), store, events)
    print(f"END {step.stage} {time.monotonic():.3f}", flush=True)
print("RESULT " + json.dumps({s.name: done[s.key].metrics for s in steps}), flush=True)
"""
TARGETS = ("data", "lora", "merge", "reft", "evaluate")


def overrides(keyword_data, root: Path) -> list[str]:
    return ["model.max_length=64", f"data.source={keyword_data}", "data.holdout_size=60",
            "data.valid_size=40",
            "data.max_train=240", "lora.lr=3e-3", "reft.lr=1e-2", "lora.epochs=3", "reft.epochs=3",
            f"artifact_root={root}"]


def child(args: list[str], kill: tuple[str, float] | None = None) -> tuple[int, list[str]]:
    """Run the driver; with kill=(event, delay) SIGKILL it ``delay`` s after it prints a line
    starting with ``event`` ('START lora ', 'EPOCH reft 1', ...)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    p = subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    lines = []
    for line in p.stdout:
        lines.append(line.strip())
        if kill and line.startswith(kill[0]):
            time.sleep(kill[1])
            os.kill(p.pid, signal.SIGKILL)
            break
    lines += [ln.strip() for ln in p.stdout]
    return p.wait(timeout=600), lines


def result(lines: list[str]) -> dict:
    """Final metrics without wall-clock ones (timings differ from run to run)."""
    out = json.loads(next(ln for ln in lines if ln.startswith("RESULT "))[7:])
    return {stage: {k: v for k, v in m.items() if "second" not in k and k != "resumed_from_epoch"}
            for stage, m in out.items()}


def landed(lines: list[str]) -> str:
    """The stage that was running when the process died ('between' if none was)."""
    events = [ln.split()[:2] for ln in lines if ln.startswith(("START", "END", "EPOCH"))]
    return events[-1][1] if events and events[-1][0] in ("START", "EPOCH") else "between"


@pytest.fixture(scope="module")
def reference(stories, keyword_data, tmp_path_factory):
    """An uninterrupted run: final metrics and each stage's duration."""
    root = tmp_path_factory.mktemp("reference")
    rc, lines = child(overrides(keyword_data, root))
    assert rc == 0, lines[-20:]
    starts, durations = {}, {}
    for ln in lines:
        if ln.startswith(("START", "END")):
            what, stage, t = ln.split()
            if what == "START":
                starts[stage] = float(t)
            else:
                durations.setdefault(stage, float(t) - starts[stage])
    return result(lines), durations, root


def inject(reference, keyword_data, root: Path, stage: str, fraction: float, event: str = "") -> dict:
    """Kill ``fraction`` of the stage's duration after it starts (or right after ``event``)."""
    metrics, durations, _ = reference
    delay = 0.0 if event else fraction * durations[stage]
    rc, lines = child(overrides(keyword_data, root), kill=(event or f"START {stage} ", delay))
    where = landed(lines) if rc == -signal.SIGKILL else "finished"
    rc2, lines2 = child(overrides(keyword_data, root))
    assert rc2 == 0, f"rerun after a kill in {stage} at +{delay:.2f} s failed: {lines2[-10:]}"
    store = ArtifactStore(str(root))
    checked = 0
    for meta in root.glob(f"**/{META}"):
        rel = meta.parent.relative_to(root)
        if rel.parts[0] in (".tmp", ".trash"):
            continue
        art = store.find(str(rel.parent), rel.name)
        assert art is not None and store.verify(art) is None, f"corrupt artifact {rel}"
        checked += 1
    assert result(lines2) == metrics, (f"kill in {stage} at +{delay:.2f} s: "
                                       "metrics differ from the uninterrupted run")
    resumed = json.loads(next(ln for ln in lines2 if ln.startswith("RESULT "))[7:])
    return {"stage": stage, "delay": round(delay, 2), "landed": where, "verified": checked,
            "resumed_lora": resumed["lora"]["resumed_from_epoch"],
            "resumed_reft": resumed["reft"]["resumed_from_epoch"]}


def run_injections(reference, keyword_data, tmp_path, stages, fractions) -> list[dict]:
    rows = [inject(reference, keyword_data, tmp_path / f"root{i}", stage, f)
            for i, (stage, f) in enumerate(zip(stages, fractions))]
    for r in rows:
        print(r)
    return rows


@pytest.mark.slow  # 62 s; the 25-kill variant is slow too; epoch resume stays in test_checkpoints
def test_kill9_in_training_stages_then_rerun(reference, keyword_data, tmp_path):
    """Kills pinned to progress events, not to time (a loaded machine would shift them):
    in LoRA's epoch 3 (its epoch-2 checkpoint is written before EPOCH 2 is printed), in
    ReFT's epoch 2, and in the first evaluation."""
    rows = [inject(reference, keyword_data, tmp_path / name, stage, 0, event)
            for name, stage, event in (("a", "lora", "EPOCH lora 2"), ("b", "reft", "EPOCH reft 1"),
                                       ("c", "evaluate", "START evaluate "))]
    print(*rows, sep="\n")
    assert [r["landed"] for r in rows] == ["lora", "reft", "evaluate"]
    assert rows[0]["resumed_lora"] == 2 and rows[1]["resumed_reft"] == 1


@pytest.mark.slow
def test_kill9_fault_injection_25(reference, keyword_data, tmp_path):
    rng = random.Random(2)  # kill times: uniform in 0-120% of the stage's duration
    stages = [s for s in TARGETS for _ in range(5)]
    rows = run_injections(reference, keyword_data, tmp_path, stages, [rng.uniform(0, 1.2) for _ in stages])
    assert len(rows) == 25
    assert sum(r["landed"] in TARGETS for r in rows) >= 15  # most kills landed inside a stage
    assert any(r["resumed_lora"] or r["resumed_reft"] for r in rows)  # some reruns resumed mid-stage


def weights_digest(root: Path) -> dict[str, str]:
    """sha256 of every trained tensor file (LoRA adapter, ReFT intervention, merged weights)."""
    out = {}
    for stage in ("lora", "merge", "reft"):
        for meta in (root / stage).glob(f"*/{META}"):
            for rel, info in json.loads(meta.read_text())["files"].items():
                if rel.endswith(".safetensors"):
                    out[f"{stage}/{rel}"] = info["sha256"]
    return out


def test_same_seed_gives_identical_metrics_and_weights(reference, keyword_data, tmp_path):
    """Determinism on CPU: a second process with the same seed reproduces the uninterrupted
    run bit for bit (metrics and the sha256 of every trained tensor file)."""
    metrics, _, ref_root = reference
    rc, lines = child(overrides(keyword_data, tmp_path / "again"))
    assert rc == 0
    assert result(lines) == metrics
    digest = weights_digest(tmp_path / "again")
    assert len(digest) >= 3 and digest == weights_digest(ref_root)


def test_nan_loss_stops_the_stage_naming_the_step_and_caches_nothing(stories, keyword_data, tmp_path,
                                                                      monkeypatch):
    from heft.modeling import training
    from heft.run.execute import run_pipeline
    from heft.presets import load_run_config
    cfg = load_run_config("deployments/stories-boolq.yaml", overrides(keyword_data, tmp_path / "art"))
    real, calls = training.models.loss_fn, []

    def poisoned(*args, **kwargs):  # the 20th step's loss is NaN: epoch 2 (15 steps/epoch), step 4
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 20 else loss
    monkeypatch.setattr(training.models, "loss_fn", poisoned)
    with pytest.raises(FloatingPointError, match=r"^lora: loss is nan at epoch 2 step 4$"):
        run_pipeline(cfg)
    assert not (tmp_path / "art" / "lora").exists()  # no LoRA artifact, nothing downstream
    assert not (tmp_path / "art" / "merge").exists()
    epochs = [p.name for p in (tmp_path / "art" / "checkpoints" / "lora").glob("*/epoch-*")]
    assert epochs == ["epoch-0001"]  # the epoch before the fault is kept for a resume
