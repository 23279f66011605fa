"""The same pipeline with data and artifacts on S3 (s3fs against a moto server on loopback)."""
import pytest

from heft.artifacts import ArtifactStore
from heft.config import DataConfig, LoraConfig, ModelConfig, ReftConfig, RunConfig
from heft.pipeline import run_pipeline


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server_mod = pytest.importorskip("moto.server")
    mp = pytest.MonkeyPatch()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
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
