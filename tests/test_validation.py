"""Bad input is refused before any work, through the user's path (`heft run`), with an
error naming the value and where it came from, and nothing written: no artifact root,
no MLflow store.  CASES doubles as the table in the reliability notes."""
from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from flows.cli import main

PRESET = "deployments/stories-boolq.yaml"
ROW = {"question": "is it", "passage": "A story.", "label": True}


def jsonl(tmp_path, name, rows) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def unwritable(tmp_path) -> str:
    if os.geteuid() == 0:  # root ignores permission bits; /proc takes no new files
        return "/proc/heft-artifacts"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return str(locked / "artifacts")


# (class, extra argv builder, text the error must contain)
CASES = [
    ("unknown model folder", lambda t: ["model.name=../shared/models/nope"],
     "model.name='../shared/models/nope': no such folder"),
    ("unknown hub model id (offline)", lambda t: ["model.name=nobody/no-such-model"],
     "model.name='nobody/no-such-model'"),
    ("ReFT layer >= depth", lambda t: ["reft.layer=5"], "reft.layer=5: the model has 5 blocks"),
    ("ReFT layer < 0", lambda t: ["reft.layer=-1"], "reft.layer=-1"),
    ("low-rank dim <= 0", lambda t: ["reft.rank=0"], "reft.rank=0"),
    ("low-rank dim > hidden size", lambda t: ["reft.rank=65"],
     "reft.rank=65: must be in [1, hidden size 64]"),
    ("LoRA rank <= 0", lambda t: ["lora.rank=0"], "lora.rank=0"),
    ("unknown LoRA target module", lambda t: ["lora.target_modules=[q_proj,qkv]"],
     "lora.target_modules=['qkv']"),
    ("epochs < 0", lambda t: ["reft.epochs=-2"], "reft.epochs=-2"),
    ("missing data source", lambda t: [f"data.source={t}/none.jsonl"], "none.jsonl' does not exist"),
    ("empty split", lambda t: [f"data.source={jsonl(t, 'empty.jsonl', [])}"], "empty.jsonl: split is empty"),
    ("missing column",
     lambda t: [f"data.source={jsonl(t, 'nolabel.jsonl', [ROW, {'question': 'q', 'passage': 'p'}])}"],
     "nolabel.jsonl: row 1: missing field 'label'"),
    ("non-boolean label", lambda t: [f"data.source={jsonl(t, 'yes.jsonl', [ROW, {**ROW, 'label': 'yes'}])}"],
     "yes.jsonl: row 1: field 'label' must be a boolean, got 'yes'"),
    ("passage null in passage format",
     lambda t: [f"data.source={jsonl(t, 'nopassage.jsonl', [{**ROW, 'passage': None}])}"],
     "nopassage.jsonl: row 0: field 'passage' must be a string"),
    ("unknown position spec", lambda t: ["reft.positions=x3"], "reft.positions='x3'"),
    ("invalid artifact root URL", lambda t: ["artifact_root=nosuchproto://bucket/x"],
     "artifact_root='nosuchproto://bucket/x'"),
    ("unreachable artifact root", lambda t: ["artifact_root=s3://heft-none/x"],
     "artifact_root='s3://heft-none/x': not reachable"),
    ("unwritable folder", lambda t: [f"artifact_root={unwritable(t)}"], "not writable"),
    ("artifact root under a file", lambda t: [f"artifact_root={t}/ROW.txt/a"], "is a file, not a folder"),
    ("unknown override key", lambda t: ["lora.rnak=4"], "unknown option 'lora.rnak'"),
    ("non-numeric value", lambda t: ["lora.lr=fast"], "lora.lr='fast': expected a number"),
    ("held-out rows also in training", lambda t: ["data.eval_source=../shared/data/boolq/validation.jsonl",
                                                  "data.holdout_size=null"],
     "data: 3270 of the 3270 held-out rows also occur in the training"),
    ("holdout_size with eval_source", lambda t: ["data.eval_source=../shared/data/boolq/validation.jsonl"],
     "data.holdout_size=1000: does nothing with data.eval_source"),
    ("dead MLflow server", lambda t: ["tracking_uri=http://127.0.0.1:9"],
     "tracking_uri='http://127.0.0.1:9': no MLflow server answers"),
    ("bool option not true/false", lambda t: ["merge.safe_merge=nope"],
     "merge.safe_merge='nope': expected true or false"),
    ("seed not a number", lambda t: ["seed=abc"], "seed='abc': expected a whole number"),
    ("seed a quoted number", lambda t: ["seed='7'"], "seed='7': expected a whole number"),
    ("seed a fraction", lambda t: ["seed=1.5"], "seed=1.5: expected a whole number"),
    ("LoRA rank above the weights' size", lambda t: ["lora.rank=1000000"],
     "lora.rank=1000000: must be <= 32, the smallest dimension of the adapted weights"),
    ("model name not a string", lambda t: ["model.name=3"], "model.name=3: expected a string"),
    ("list for a number", lambda t: ["lora.rank=[8]"], "lora.rank=[8]: expected a number"),
    ("unreachable S3 data source", lambda t: ["data.source=s3://heft-none/x.jsonl"],
     "data source 's3://heft-none/x.jsonl'"),
]


@pytest.fixture
def where(tmp_path, monkeypatch):
    """Artifact root and MLflow store of the run (neither may appear), plus a dead S3 endpoint."""
    (tmp_path / "ROW.txt").write_text("a file")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return tmp_path


def refused(where, argv) -> str:
    """stderr of `heft run` (not capsys: Prefect's rich console keeps the first stream it
    sees and would write to a closed capture in later tests; this buffer is never closed)."""
    before = sorted(p.name for p in where.iterdir())
    args = [f"artifact_root={where}/art", f"tracking_uri=sqlite:///{where}/ml/mlflow.db", *argv]
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        assert main(["run", "--preset", PRESET, *args]) == 2
    err = buffer.getvalue()
    assert sorted(p.name for p in where.iterdir()) == before, "something was written"
    return err


@pytest.mark.parametrize("name,extra,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_work(harness, where, stories, boolq_validation, name, extra, needle):
    err = refused(where, extra(where))
    line = next((ln for ln in err.splitlines() if ln.startswith("heft: error: ")), "")
    assert needle in line, err[-2000:]


def test_malformed_preset_names_the_file(where):
    bad = where / "bad.yaml"
    bad.write_text("lora: {rank: 8\n")
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        assert main(["run", "--preset", str(bad)]) == 2
    assert f"preset {str(bad)!r} is not valid YAML" in buffer.getvalue()


@pytest.mark.parametrize("mode", ["lora-only", "reft-lora"])
def test_validation_skips_what_finished_artifacts_prove(stories, keyword_data, tmp_path, mode, monkeypatch):
    import shutil
    import subprocess
    import sys
    from heft.run import validate as v
    from heft.run.execute import run_pipeline
    from heft.modes import MODES
    from heft.plan import plan
    from heft.presets import load_run_config
    overrides = [f"artifact_root={tmp_path}/art", f"data.source={keyword_data}", f"mode={mode}",
                 "data.holdout_size=40", "data.valid_size=20", "data.max_train=60",
                 "model.max_length=32", "lora.epochs=1", "reft.epochs=1"]
    cfg = load_run_config(PRESET, overrides)
    built, skeleton = [], v.model_skeleton
    def counted(*args):
        built.append(args)
        return skeleton(*args)
    monkeypatch.setattr(v, "model_skeleton", counted)
    assert v.validate(plan(cfg)).model["depth"] > 0
    assert len(built) == 1  # nothing cached yet: the LoRA targets are checked on the skeleton
    out = run_pipeline(cfg)
    assert {s.name: (s.stage, s.key) for s in plan(cfg).steps} == {
        name: (art.stage, art.key) for name, art in out.items()}
    checked = v.validate(plan(cfg))
    assert checked.all_built and len(checked.built) == len(out) and checked.model is None
    # ... and a fully cached check imports neither torch nor transformers
    probe = ("import sys; from heft.presets import load_run_config; from heft.run.validate import validate; "
             "from heft.plan import plan; "
             f"c = validate(plan(load_run_config({PRESET!r}, {overrides!r}))); print(len(c.built), c.model, "
             "sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert shown.strip() == f"{len(out)} None []"
    shutil.rmtree(out[f"eval:{MODES[mode].final}"].uri)  # something to build: the model is checked,
    assert v.validate(plan(cfg)).model["depth"] > 0
    assert len(built) == 1  # but the finished LoRA artifact still stands for the module-name check
