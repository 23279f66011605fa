"""The same pipeline with data and artifacts on S3 (s3fs against a moto server on loopback)."""
import pytest

from heft.store.artifacts import ArtifactStore
from heft.config import DataConfig, LoraConfig, ModelConfig, ReftConfig, RunConfig
from heft.run.execute import run_pipeline


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server_mod = pytest.importorskip("moto.server")
    mp = pytest.MonkeyPatch()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                 "HEFT_CACHE_DIR": str(tmp_path_factory.mktemp("s3cache"))}.items():
        mp.setenv(k, v)
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("heft-test")
    yield fs
    server.stop()
    mp.undo()


def test_pipeline_on_s3_reuses_artifacts(s3, stories, keyword_data):
    s3.put_file(str(keyword_data), "heft-test/data/keyword.jsonl")
    cfg = RunConfig(model=ModelConfig(name=str(stories), max_length=64),
                    data=DataConfig(source="s3://heft-test/data/keyword.jsonl", holdout_size=60,
                                    valid_size=40, max_train=120),
                    lora=LoraConfig(epochs=3, lr=3e-3), reft=ReftConfig(epochs=3, lr=1e-2, layer=3),
                    artifact_root="s3://heft-test/artifacts")
    out = run_pipeline(cfg)
    for stage in ("data", "lora", "merge", "reft"):
        assert s3.exists(f"heft-test/artifacts/{stage}/{out[stage].key}/meta.json")
    assert s3.exists(f"heft-test/artifacts/merge/{out['merge'].key}/model/model.safetensors")
    assert out["eval:heft"].uri.startswith("s3://") and out["eval:heft"].metrics["accuracy"] > 0.8
    again = run_pipeline(cfg)
    assert all(again[k].meta.get("created") == out[k].meta.get("created") for k in out)
    store = ArtifactStore(cfg.artifact_root)
    assert (store.local_path(out["reft"]) / "intervention.safetensors").exists()
    # the model loads from its s3:// artifact URI, and exports to and loads back from S3
    import heft
    from heft.inference.export import export
    rows = [{"question": "is the cat happy today", "passage": "A short story, number 1."}]
    model = heft.load(out["eval:heft"].uri)
    export(model, "s3://heft-test/exported/heft")
    assert s3.exists("heft-test/exported/heft/heft.json")
    assert s3.exists("heft-test/exported/heft/model/config.json")
    back = heft.load("s3://heft-test/exported/heft")
    want = model.predict(rows)[0]["score_true"]
    assert back.predict(rows)[0]["score_true"] == pytest.approx(want, abs=1e-5)


class FlakyS3:
    """An HTTP proxy in front of moto that answers every ``every``-th request with S3's
    500 InternalError (which s3fs does not retry itself: only botocore's retry mode does)."""

    def __init__(self, upstream: str, every: int):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse
        host, port = urlparse(upstream).hostname, urlparse(upstream).port
        proxy, lock = self, threading.Lock()
        self.requests = self.injected = 0
        self.every = every

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" is answered

            def log_message(self, *args):
                pass

            def handle_one(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    proxy.requests += 1
                    fail = proxy.requests % proxy.every == 0
                    proxy.injected += fail
                if fail:
                    msg = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection(host, port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server",
                                         "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.mark.slow  # slow tier: 47 s of real backoff waits
def test_transient_s3_errors_are_retried_with_backoff(s3, stories, keyword_data, monkeypatch, tmp_path):
    """S3 requests fail with a 500 (every 2nd, then every 5th).  With one attempt the run
    fails; with heft's default retry mode it completes and its artifacts pass the full
    sha256 check.  (Some failures are absorbed without retries too: a failed existence check
    reads as a cache miss, so the negative control fails every other request.)"""
    import os
    import s3fs
    s3.put_file(str(keyword_data), "heft-test/data/flaky.jsonl")
    proxy = FlakyS3(os.environ["AWS_ENDPOINT_URL"], every=2)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("HEFT_CACHE_DIR", str(tmp_path / "cache"))

    def cfg(root):
        return RunConfig(model=ModelConfig(name=str(stories), max_length=64),
                         data=DataConfig(source="s3://heft-test/data/flaky.jsonl", holdout_size=60,
                                         valid_size=40, max_train=120),
                         lora=LoraConfig(epochs=1, lr=3e-3), reft=ReftConfig(epochs=1, lr=1e-2, layer=3),
                         artifact_root=f"s3://heft-test/{root}")
    try:
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(Exception, match="InternalError|injected|500"):
            run_pipeline(cfg("no-retries"))
        failed_after = proxy.injected
        proxy.every = 5
        monkeypatch.delenv("AWS_MAX_ATTEMPTS")
        s3fs.S3FileSystem.clear_instance_cache()
        out = run_pipeline(cfg("with-retries"))
    finally:
        proxy.close()
    assert failed_after >= 1 and proxy.injected > failed_after + 3  # faults kept coming, and were retried
    store = ArtifactStore("s3://heft-test/with-retries")
    for name in ("data", "lora", "merge", "reft", "eval:heft"):
        assert store.verify(out[name]) is None, name
    print(f"S3 requests {proxy.requests}, injected 500s {proxy.injected}")


def publish_bytes(store: ArtifactStore, key: str, payload: bytes):
    with store.scratch("lora", key) as tmp:
        (tmp / "adapter").mkdir()
        (tmp / "adapter" / "w.bin").write_bytes(payload)
        return store.publish(tmp, "lora", key, {"config": {"rank": 8}, "metrics": {}, "lineage": {}})


@pytest.mark.parametrize("damage", ["resized", "same size"])
def test_a_damaged_entry_on_s3_is_set_aside_and_its_rebuild_publishes(s3, tmp_path, caplog, damage):
    """A resized file is seen by the lookup, a same-size one by the sha256 check when the files
    are opened; either way the entry goes to .trash/ on the object store and a rebuild with
    other bytes (LoRA and ReFT never reproduce theirs: history.json has timings) publishes."""
    from heft.store.damage import DamagedArtifact
    store = ArtifactStore(f"s3://heft-test/heal-{damage.replace(' ', '-')}", cache=str(tmp_path / "cache"))
    art = publish_bytes(store, "k1", b"x" * 100)
    entry = f"{store.base}/lora/k1"
    s3.pipe(f"{entry}/adapter/w.bin", b"x" * 40 if damage == "resized" else b"z" * 100)
    with caplog.at_level("WARNING"):
        if damage == "resized":
            assert store.find("lora", "k1") is None
        else:
            with pytest.raises(DamagedArtifact):
                store.open(art)
    assert "could not set aside" not in caplog.text
    assert not s3.exists(f"{entry}/meta.json") and not s3.exists(f"{entry}/adapter/w.bin")
    trashed = s3.find(f"{store.base}/.trash")
    assert sorted(p.rsplit("/", 1)[-1] for p in trashed) == ["meta.json", "w.bin"], trashed
    again = publish_bytes(store, "k1", b"y" * 100)
    assert again.meta["build"]["id"] != art.meta["build"]["id"] and store.verify(again) is None
    assert (store.open(again) / "adapter" / "w.bin").read_bytes() == b"y" * 100


def test_a_local_copy_that_lost_its_meta_json_is_fetched_again(s3, tmp_path):
    """The local cache copy of an s3:// artifact without meta.json (a crash, a cleaner) is
    incomplete by definition: it is replaced by a fresh download, S3 being intact."""
    store = ArtifactStore("s3://heft-test/recache", cache=str(tmp_path / "cache"))
    art = publish_bytes(store, "k2", b"x" * 100)
    folder = store.open(art)
    (folder / "meta.json").unlink()
    (folder / "adapter" / "w.bin").write_bytes(b"half")
    again = store.open(store.find("lora", "k2"))
    assert again == folder and (again / "meta.json").exists()
    assert (again / "adapter" / "w.bin").read_bytes() == b"x" * 100


def test_an_s3_export_destination_that_is_not_empty_is_refused(s3, monkeypatch):
    from heft.inference import export as ex

    def write(model, folder, pyreft_layout=True):
        (folder / "model").mkdir()
        (folder / "model" / "w.bin").write_bytes(model)
        (folder / "heft.json").write_text("{}")
    monkeypatch.setattr(ex, "write_folder", write)
    ex.export(b"first", "s3://heft-test/exports/m")
    with pytest.raises(FileExistsError, match="s3://heft-test/exports/m.*not empty"):
        ex.export(b"second", "s3://heft-test/exports/m/")
    assert s3.cat("heft-test/exports/m/model/w.bin") == b"first"
