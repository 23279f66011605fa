"""`heft run` as the user runs it, in fresh processes with Prefect's temporary server: the
rerun reports every stage task Cached, gives the same results, and never imports torch,
transformers or peft, nor Prefect's server modules (the server boots in its own process,
flows/prefect_server.py), whose logs all reach that server before it stops (what keeps a
cached rerun to seconds; see docs/benchmarks.md)."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_TASKS = ("data", "base", "lora", "merge", "reft", "evaluate:lora", "evaluate:merged", "evaluate:heft")


def heft_run(overrides: list[str], env: dict, *python_flags: str) -> tuple[dict, list[str], str]:
    """(printed results, stage states, stderr) of one `python -m flows run --json`."""
    proc = subprocess.run([sys.executable, *python_flags, "-m", "flows", "run", "--json", "--preset",
                           "deployments/stories-boolq.yaml", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # with --json the CLI prints the results per evaluation and the model as JSON (for scripts)
    results = json.loads(proc.stdout)
    # and on stderr one line per step: '12:00:01 lora · rank=8 · epochs=1 · seed=0: done in 3 s, ...'
    said = re.findall(r"^\d\d:\d\d:\d\d (?:data|base|lora|merge|reft|evaluate:[\w-]+)[^:]*: (done|cached)\b",
                      proc.stderr, re.M)
    states = [{"done": "Completed", "cached": "Cached"}[s] for s in said]
    return results, states, proc.stderr


def test_cli_rerun_is_cached_and_imports_no_torch(stories, keyword_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # a temporary server
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), TQDM_DISABLE="1")
    overrides = [f"artifact_root={tmp_path}/art", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                 f"model.name={stories}", f"data.source={keyword_data}", "data.holdout_size=40",
                 "data.valid_size=20", "data.max_train=60", "model.max_length=32", "lora.epochs=1",
                 "reft.epochs=1"]
    first, first_states, _ = heft_run(overrides, env)
    assert first_states == ["Completed"] * 8 and set(first) == {"lora", "merged", "heft", "model"}
    again, states, stderr = heft_run(overrides, env, "-X", "importtime")
    assert states == ["Cached"] * 8
    assert again.pop("model")["uri"] == first.pop("model")["uri"]  # the model logged by the first run
    assert again == first
    imported = {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines()
                if line.startswith("import time:")}
    assert "prefect" in imported and "mlflow" in imported  # the check sees real imports
    assert not {"torch", "transformers", "peft", "pyreft", "prefect.server.api.server"} & imported
    # both flow runs, with their task runs and every log line, are in the server's database
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        runs = db.execute("select state_name, (select count(*) from task_run t where t.flow_run_id = f.id), "
                          "(select count(*) from log l where l.flow_run_id = f.id) "
                          "from flow_run f").fetchall()
        names = {r[0] for r in db.execute("select name from task_run")}
        # task runs named by what they are: 'lora · rank=8 · epochs=1 · seed=0'
        others = {n for n in names if n.split(" · ")[0] not in STAGE_TASKS}
    # 8 stage tasks each; log-model only in the first (the rerun's model is logged already)
    assert sorted(r[:2] for r in runs) == [("Completed", 8), ("Completed", 9)]
    assert others == {"log-model"}, others
    assert all(r[2] >= 20 for r in runs)  # "Beginning", validation, 8 stage lines, 8 task lines, results, end
