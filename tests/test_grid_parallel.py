"""A grid as a DAG on a distributed engine: a ReFT layer x dim grid on a Dask LocalCluster of
two worker processes, each holding one GPU resource.  From the build log (every artifact's
stage, key, start, end and process): every step built exactly once, ReFT builds of different
cells overlapping in time, no worker ever running two GPU-resource stages at once; every cell's
numbers equal the same grid run sequentially; a rerun is all Cached."""
from __future__ import annotations

import itertools
import json

import pytest

from heft.grids.spec import load_grid
from heft.grids.plan import GPU_STAGES

pytest.importorskip("prefect_dask")
# the long tier (make test-long, CI): two grids on a 2-worker cluster take about 2.5 minutes
pytestmark = pytest.mark.long


@pytest.fixture(scope="module")
def grids(harness, tiny_llama, keyword_data, tmp_path_factory):
    from flows.grid_flow import heft_grid
    tmp = tmp_path_factory.mktemp("dag")
    base = [f"model.name={tiny_llama}", "model.max_length=32", f"data.source={keyword_data}",
            "preset=deployments/stories-boolq.yaml",
            "data.holdout_size=60",
            "data.valid_size=40", "data.max_train=480", "lora.lr=1e-2", "reft.lr=1e-2", "lora.epochs=1",
            "reft.epochs=8", f"tracking_uri=sqlite:///{tmp}/mlflow.db",
            "axes={reft.layer: [0, 1, 2], reft.rank: [2, 4]}"]

    def run(root, *extra):
        spec = load_grid("deployments/grids/ablation.yaml", base + [f"artifact_root={tmp}/{root}", *extra])
        return heft_grid(spec=spec, report_dir=str(tmp / f"report-{root}-{len(list(tmp.iterdir()))}"))
    log = tmp / "builds.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("HEFT_BUILD_LOG", str(log))  # inherited by the Dask worker processes
    mp.setenv("OMP_NUM_THREADS", "1")
    try:
        parallel = run("dask", "dask=local", "workers=2")
        builds = [json.loads(line) for line in log.read_text().splitlines()]
        mp.delenv("HEFT_BUILD_LOG")
        again = run("dask", "dask=local", "workers=2")
        sequential = run("seq")
    finally:
        mp.undo()
    return parallel, builds, again, sequential


def test_every_step_is_built_once_by_the_two_workers(grids):
    parallel, builds, _, _ = grids
    keys = [(b["stage"], b["key"]) for b in builds]
    assert len(keys) == len(set(keys)) == 6 + 6 * 2  # data base lora merge 2 evals; 6 ReFT + their evals
    assert len({b["pid"] for b in builds if b["stage"] in GPU_STAGES}) == 2  # both workers did work


def test_reft_builds_overlap_and_no_worker_runs_two_gpu_stages_at_once(grids):
    _, builds, _, _ = grids
    reft = [b for b in builds if b["stage"] == "reft"]
    overlapping = [(a, b) for a, b in itertools.combinations(reft, 2)
                   if a["started"] < b["finished"] and b["started"] < a["finished"]]
    assert overlapping, "no two ReFT builds ran at the same time"
    for pid in {b["pid"] for b in builds}:
        gpu = sorted((b["started"], b["finished"]) for b in builds
                     if b["pid"] == pid and b["stage"] in GPU_STAGES)
        assert all(end <= start for (_, end), (start, _) in zip(gpu, gpu[1:])), f"worker {pid} overlapped"


def test_parallel_cells_equal_the_sequential_grid_and_rerun_is_cached(grids):
    parallel, _, again, sequential = grids
    def by(cells):
        return {c["label"]: (c["accuracy"], c["ci95_low"], c["valid_accuracy"]) for c in cells}
    assert by(parallel["cells"]) == by(sequential["cells"])
    assert len(parallel["cells"]) == 6 and all(c["accuracy"] > 0.8 for c in parallel["cells"])
    assert all(s["state"] == "Cached" for c in again["cells"] for s in c["stages"])
