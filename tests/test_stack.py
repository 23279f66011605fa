"""The local stack end to end, on loopback only: `stack.py up` (S3 server, redis, MLflow
server, Prefect server, pools, worker, a Dask scheduler with two GPU-resource workers),
`prefect deploy --all`, `prefect deployment run heft/boolq` twice on stories260K, a grid fanned
out to the work pool (and one whose broken cell fails it), a grid on the stack's Dask cluster
with the redis lease lock, then `stack.py down`.  About 6 minutes on 2 cores, so the module
has its own tier (make test-stack, which CI runs after make test; make test-slow runs it too):
on a 2-core Intel machine the default tier took 19 min 17 s with it (2026-12-05), too close to
its 20 minutes."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "deployments" / "stack.py"
BIN = Path(sys.executable).parent
TINY = {"preset": "deployments/stories-boolq.yaml",
        "overrides": ["data.max_train=300", "data.holdout_size=200", "data.valid_size=100"]}
GPU_ENV = {"HEFT_GPU_IMAGE": "registry.example.com/heft:gpu", "HEFT_GPU_ARTIFACT_ROOT": "s3://team-bucket/heft",
           "HEFT_GPU_TRACKING_URI": "https://mlflow.example.com"}
STAGES = ("data", "lora", "merge", "reft", "evaluate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(args: list[str], env: dict, timeout: float) -> str:
    out = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (f"{args[:3]} failed ({out.returncode}):\n"
                                 f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out.stdout


def call(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory, stories, boolq_validation):
    root = tmp_path_factory.mktemp("stack").resolve()
    env = {**os.environ, "HEFT_STACK_DIR": str(root), "HEFT_PREFECT_PORT": str(free_port()),
           "HEFT_MLFLOW_PORT": str(free_port()), "HEFT_S3_PORT": str(free_port()),
           "HEFT_REDIS_PORT": str(free_port()), "HEFT_DASK_PORT": str(free_port()),
           "HEFT_S3_BUCKET": "heft-it"}
    try:
        sh([sys.executable, str(STACK), "up"], env, timeout=300)
        client = dict(line.removeprefix("export ").split("=", 1)
                      for line in (root / "env").read_text().splitlines())
        yield {"root": root, "stack_env": env,
               "env": {**env, **client, **GPU_ENV, "PREFECT_HOME": str(root / "cli")},
               "prefect": client["PREFECT_API_URL"], "mlflow": client["MLFLOW_TRACKING_URI"]}
    finally:
        subprocess.run([sys.executable, str(STACK), "down"], env=env, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def deployed(stack):
    (stack["root"] / "cli").mkdir(exist_ok=True)
    sh([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], stack["env"], timeout=180)
    return stack


def run_deployment(stack) -> str:
    out = sh([str(BIN / "prefect"), "deployment", "run", "heft/boolq", "--params", json.dumps(TINY),
              "--watch", "--watch-timeout", "600"], stack["env"], timeout=660)
    return re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)


def task_states(stack, flow_run_id: str) -> dict[str, list[str]]:
    runs = call(f"{stack['prefect']}/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    states: dict[str, list[str]] = {}
    for r in runs:
        # task-run names say what they make: 'reft · layer=3 · seed=0', 'evaluate:heft · ...'
        stage = r["name"].split(" · ")[0].split(":")[0]
        states.setdefault(stage, []).append(r["state"]["name"])
    return states


def mlflow_runs(stack, filter_string: str) -> list[dict]:
    exp = call(f"{stack['mlflow']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=heft")["experiment"]
    body = {"experiment_ids": [exp["experiment_id"]], "filter": filter_string, "max_results": 100}
    return call(f"{stack['mlflow']}/api/2.0/mlflow/runs/search", body).get("runs", [])


def as_dict(items: list[dict]) -> dict:
    return {i["key"]: i["value"] for i in items}


def test_deployment_runs_on_the_stack_and_reruns_cached(deployed):
    stack = deployed
    first = run_deployment(stack)
    assert call(f"{stack['prefect']}/flow_runs/{first}")["state"]["name"] == "Completed"
    states = task_states(stack, first)
    assert set(STAGES) <= set(states) and "Cached" not in sum(states.values(), [])

    import s3fs
    env = stack["env"]
    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key=env["AWS_ACCESS_KEY_ID"],
                           secret=env["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
    for stage in STAGES:  # each stage's artifact, complete (meta.json is written last)
        assert fs.glob(f"heft-it/artifacts/{stage}/*/meta.json"), f"no {stage} artifact on S3"
    assert fs.glob("heft-it/artifacts/merge/*/model/model.safetensors")
    assert fs.find("heft-it/prefect-results"), "Prefect task results are not on S3"
    assert fs.glob("heft-it/mlflow/*/*/artifacts/heft/meta.json"), "MLflow artifacts are not on S3"

    parents = mlflow_runs(stack, "tags.`heft.mode` = 'heft'")
    assert len(parents) == 1
    params, metrics = as_dict(parents[0]["data"]["params"]), as_dict(parents[0]["data"]["metrics"])
    assert params["lora.rank"] == "8" and params["reft.layer"] == "3" and params["data.max_train"] == "300"
    assert params["artifact_root"] == "s3://heft-it/artifacts"
    assert 0.0 < metrics["heldout_accuracy"] < 1.0
    assert metrics["heldout_ci95_low"] <= metrics["heldout_accuracy"] <= metrics["heldout_ci95_high"]

    second = run_deployment(stack)
    assert call(f"{stack['prefect']}/flow_runs/{second}")["state"]["name"] == "Completed"
    states = task_states(stack, second)
    assert set(STAGES) <= set(states)
    assert all(s == "Cached" for s in sum(states.values(), [])), states
    runs = mlflow_runs(stack, "tags.`heft.mode` = 'heft'")
    assert len(runs) == 2
    again = next(r for r in runs if r["info"]["run_id"] != parents[0]["info"]["run_id"])
    assert as_dict(again["data"]["metrics"])["heldout_accuracy"] == metrics["heldout_accuracy"]
    # the cached rerun is one run with no stage runs: it links to the runs that built them
    assert mlflow_runs(stack, f"tags.mlflow.parentRunId = '{again['info']['run_id']}'") == []
    built = {as_dict(c["data"]["tags"])["heft.stage"]: c["info"]["run_id"]
             for c in mlflow_runs(stack, f"tags.mlflow.parentRunId = '{parents[0]['info']['run_id']}'")}
    assert set(STAGES) <= set(built)
    assert as_dict(again["data"]["tags"])["heft.built_by.lora"] == built["lora"]


def test_gpu_deployment_is_registered_with_schedule_and_pool(deployed):
    dep = call(f"{deployed['prefect']}/deployments/name/heft/boolq-llama2-7b")
    assert dep["work_pool_name"] == "heft-gpu"
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 3 * * 1"]
    assert all(s["active"] for s in dep["schedules"])
    assert dep["parameters"] == {"preset": "deployments/llama2-7b-boolq.yaml"}
    jv = dep["job_variables"]
    assert jv["gpu_count"] == 1 and jv["image"] == GPU_ENV["HEFT_GPU_IMAGE"]
    assert jv["env"]["HEFT_ARTIFACT_ROOT"] == GPU_ENV["HEFT_GPU_ARTIFACT_ROOT"]
    pool = call(f"{deployed['prefect']}/work_pools/heft-gpu")
    assert pool["type"] == "kubernetes"
    limits = pool["base_job_template"]["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "{{ gpu_count }}"
    from heft.presets import load_run_config
    cfg = load_run_config(dep["parameters"]["preset"])
    assert (cfg.model.name, cfg.model.dtype, cfg.reft.layer, cfg.reft.rank, cfg.reft.lr, cfg.lora.rank,
            cfg.lora.alpha) == ("meta-llama/Llama-2-7b-hf", "bfloat16", 15, 4, 2e-4, 8, 32)


GRID = ["preset=deployments/stories-boolq.yaml", "data.max_train=300", "data.holdout_size=200",
        "data.valid_size=100", "reft.epochs=2"]


def flow_runs(stack, **filters) -> list[dict]:
    return call(f"{stack['prefect']}/flow_runs/filter", {"flow_runs": filters})


def stage_runs_by_key(stack, parents: list[str]) -> dict[str, int]:
    """How many MLflow stage runs (builds) each artifact key has under the given cell runs."""
    counts: dict[str, int] = {}
    for parent in parents:
        for r in mlflow_runs(stack, f"tags.mlflow.parentRunId = '{parent}'"):
            key = as_dict(r["data"]["tags"]).get("heft.key")
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_grid_fans_out_to_the_work_pool_and_a_failed_cell_fails_it(deployed, tmp_path):
    env = deployed["env"]
    sh([str(BIN / "prefect"), "work-pool", "set-concurrency-limit", "heft-local", "2"], env, timeout=60)
    out = sh([sys.executable, "-m", "flows.cli", "grid", "--grid", "deployments/grids/reft-layers.yaml",
              *GRID, "deployment=heft/boolq"], env, timeout=900)
    grid = next(r for r in flow_runs(deployed, name={"any_": ["grid reft-layers"]}))
    assert grid["state"]["name"] == "Completed", out[-3000:]
    # the grid's own flow run carries the grid tag too (flows/cli.py); its cells are the others
    cells = [c for c in flow_runs(deployed, tags={"all_": ["grid:reft-layers"]}) if c["id"] != grid["id"]]
    assert len(cells) == 3 and all(c["state"]["name"] == "Completed" for c in cells)
    assert all(c["name"].startswith("reft-layers: ") for c in cells)
    for c in cells:  # each child hangs under the grid's flow run (run_deployment as a subflow)
        assert call(f"{deployed['prefect']}/task_runs/{c['parent_task_run_id']}")["flow_run_id"] == grid["id"]
    spans = sorted((c["start_time"], c["end_time"]) for c in cells)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), f"no two cells overlapped: {spans}"
    grid_runs = mlflow_runs(deployed, "tags.`heft.kind` = 'grid' and tags.`heft.grid` = 'reft-layers'")
    cell_runs = mlflow_runs(deployed, f"tags.mlflow.parentRunId = '{grid_runs[0]['info']['run_id']}'")
    assert len(cell_runs) == 3  # each child's pipeline run nests under the grid's MLflow run
    counts = stage_runs_by_key(deployed, [r["info"]["run_id"] for r in cell_runs])
    assert counts and set(counts.values()) == {1}, counts  # every key built by exactly one cell

    broken = tmp_path / "no-weights"  # a model folder whose weights are missing: fails only at load
    import shutil
    shutil.copytree(ROOT.parent / "shared" / "models" / "stories260K", broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    result = subprocess.run([sys.executable, "-m", "flows.cli", "grid", "--grid",
                             "deployments/grids/orderings.yaml", *GRID, f"model.name={broken}",
                             "deployment=heft/boolq"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode != 0
    named = r"cell run\(s\) of grid orderings did not complete:\n  .*(base|LoRA only) seed=0 \(flow run"
    assert re.search(named, result.stdout + result.stderr)


def test_grid_on_the_stacks_dask_cluster_with_the_lease_lock(deployed):
    env = deployed["env"]
    assert env["HEFT_LOCK_URL"].startswith("redis://") and env["HEFT_DASK_ADDRESS"].startswith("tcp://")
    sh([sys.executable, "-m", "flows.cli", "grid", "--grid", "deployments/grids/positions.yaml", *GRID,
        f"dask={env['HEFT_DASK_ADDRESS']}"], env, timeout=900)
    grid = mlflow_runs(deployed, "tags.`heft.grid` = 'positions' and tags.`heft.kind` = 'grid'")[0]
    cells = mlflow_runs(deployed, f"tags.mlflow.parentRunId = '{grid['info']['run_id']}'")
    assert len(cells) == 3 and all(as_dict(c["data"]["metrics"])["heldout_accuracy"] > 0 for c in cells)
    counts = stage_runs_by_key(deployed, [c["info"]["run_id"] for c in cells])
    assert set(counts.values()) == {1}


def test_down_leaves_no_process(stack):
    sys.path.insert(0, str(STACK.parent))
    from stack import marked_pids
    assert marked_pids(str(stack["root"])), "the marker does not find the running services"
    sh([sys.executable, str(STACK), "down"], stack["stack_env"], timeout=120)
    assert marked_pids(str(stack["root"])) == []
    ports = ("HEFT_PREFECT_PORT", "HEFT_MLFLOW_PORT", "HEFT_S3_PORT", "HEFT_REDIS_PORT", "HEFT_DASK_PORT")
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(stack["stack_env"][port]))) != 0, f"{port} still answers"
