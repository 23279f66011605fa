"""Two grid runs started at the same moment on one artifact root (two processes, each
with its own Prefect server and MLflow store): every artifact is built once (the per-key
build lock), both grids see the same artifacts, and their results are identical."""
from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in each child: wait at a file barrier, then run the grid; every publish (a build
# that finished) is appended to a log, so the parent can count builds per key.
DRIVER = r"""
import json, os, sys, time
from pathlib import Path
from heft.store.artifacts import ArtifactStore
out, barrier, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
publish = ArtifactStore.publish
def logged(self, tmp, stage, key, *a, **kw):
    with open(out / "publishes.log", "a") as f:
        f.write(f"{stage} {key}\n")
    return publish(self, tmp, stage, key, *a, **kw)
ArtifactStore.publish = logged
from flows.grid_flow import heft_grid
(barrier / f"ready-{os.getpid()}").touch()
while len(list(barrier.glob("ready-*"))) < 2:
    time.sleep(0.05)
result = heft_grid(grid="deployments/grids/reft-layers.yaml", overrides=overrides,
                   report_dir=str(out / "report"))
(out / "result.json").write_text(json.dumps({"rows": result["rows"], "cells": result["cells"]}, default=str))
"""


@pytest.mark.slow  # slow tier: 46 s; one build per key across hosts stays in test_lease_lock
def test_two_simultaneous_grids_build_each_artifact_once(stories, keyword_data, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    shared = ["preset=deployments/stories-boolq.yaml", "model.max_length=64", f"data.source={keyword_data}",
              "data.holdout_size=60", "data.valid_size=40", "data.max_train=240", "lora.lr=3e-3",
              "reft.lr=1e-2", "lora.epochs=2", "reft.epochs=2", f"artifact_root={tmp_path}/art"]
    procs = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        env = {**os.environ, "PREFECT_HOME": str(out / "prefect"), "OMP_NUM_THREADS": "1",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
        args = [*shared, f"tracking_uri=sqlite:///{out}/mlflow.db"]
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(out), str(barrier), *args], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]

    built = [line for name in "ab" if (tmp_path / name / "publishes.log").exists()
             for line in (tmp_path / name / "publishes.log").read_text().splitlines()]
    assert len(built) == len(set(built)), f"built twice: {sorted(b for b in built if built.count(b) > 1)}"
    art = tmp_path / "art"
    for stage in ("data", "lora", "merge", "reft", "evaluate"):
        keys = {line.split()[1] for line in built if line.split()[0] == stage}
        assert keys == {p.name for p in (art / stage).iterdir()}, stage
    assert not (art / ".trash").exists()
    assert not list((art / ".tmp").iterdir())
    a, b = (json.loads((tmp_path / n / "result.json").read_text()) for n in "ab")
    assert [r["accuracy"] for r in a["cells"]] == [r["accuracy"] for r in b["cells"]]
    assert ([[s["key"] for s in c["stages"]] for c in a["cells"]]
            == [[s["key"] for s in c["stages"]] for c in b["cells"]])
    assert len(a["cells"]) == 3 and all(c["accuracy"] > 0.8 for c in a["cells"])  # the keyword task is learnt
    waited = sum(log.count("another run is building it") for log in logs)
    print(f"builds: {len(built)}; lock waits: {waited}")
