"""Tasks beyond BoolQ: the built-in tasks on the offline files, a user's own JSONL of each kind
end to end on the tiny Llama, and bad input refused before any work, naming what is wrong."""
from __future__ import annotations

import json
import random

import pytest

from heft.config import ConfigError, DataConfig, EvalConfig, LoraConfig, ModelConfig, ReftConfig, RunConfig, \
    TaskConfig
from heft.data.sources import DataError, split_rows
from heft.data.task import dataset, resolve
from heft.plan import plan
from heft.run.execute import run_pipeline
from heft.run.validate import validate

SHARED_TASKS = {"gsm8k": ("gsm8k", 7473, 1319), "arc-easy": ("arc_easy", 2251, 570),
                "mawps": ("mawps_single", 1556, 199)}


@pytest.mark.parametrize("name", SHARED_TASKS)
def test_built_in_tasks_read_their_offline_folders(name, stories):
    folder, train, held = SHARED_TASKS[name]
    source = stories.parent.parent / "data" / folder
    ds = dataset(TaskConfig(name=name), DataConfig(source=str(source), valid_size=100))
    rows, record = split_rows(ds.data, ds.task)
    assert len(rows["train"]) + len(rows["valid"]) == train and len(rows["eval"]) == held
    row = rows["eval"][0]
    assert row["prompt"].startswith("Question: ") and row["prompt"].endswith("\nAnswer:")
    if ds.task.kind == "choice":
        assert 3 <= len(row["choices"]) <= 5 and 0 <= row["label"] < len(row["choices"])
    else:
        assert row["answer"] and row["target"]
    assert record["overlap"]["eval_rows_seen"] == 0


def test_gsm8k_gold_answers_come_from_the_mark_with_separators(stories):
    ds = dataset(TaskConfig(name="gsm8k"), DataConfig(source=str(stories.parent.parent / "data" / "gsm8k")))
    rows, _ = split_rows(ds.data, ds.task)
    assert rows["eval"][0]["answer"] == "18"  # Janet's ducks: "... #### 18"
    assert any("," in r["answer"] for r in rows["train"])  # thousands separators kept, compared as numbers


def test_the_task_is_part_of_the_data_key_and_the_hub_defaults_follow_it():
    boolq = plan(RunConfig(data=DataConfig(source="google/boolq")))
    assert boolq["data"].config.task.kind == "label"
    gsm = dataset(TaskConfig(name="gsm8k"), DataConfig())
    assert (gsm.data.source, gsm.data.subset) == ("openai/gsm8k", "main")
    arc = dataset(TaskConfig(name="arc-easy"), DataConfig())
    assert (arc.data.source, arc.data.subset) == ("allenai/ai2_arc", "ARC-Easy")
    with pytest.raises(ConfigError, match="data.source: task mawps has no hub dataset"):
        dataset(TaskConfig(name="mawps"), DataConfig())


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


BAD = {
    "a template naming a missing field": (
        {"name": "custom", "kind": "generate", "template": "Q: {question} ({year})"},
        [{"question": "q", "answer": "4"}], r"row 0: no field 'year'"),
    "a gold index out of range": (
        {"name": "custom", "kind": "choice", "template": "{question}"},
        [{"question": "q", "choices": ["a", "b"], "label": 2}],
        r"row 0: field 'label' must be the gold choice's index in \[0, 1\], got 2"),
    "fewer than two choices": (
        {"name": "custom", "kind": "choice", "template": "{question}"},
        [{"question": "q", "choices": ["a"], "label": 0}],
        r"row 0: field 'choices' must be a list of at least two"),
    "an empty target": (
        {"name": "custom", "kind": "generate", "template": "{question}"},
        [{"question": "q", "answer": "  "}], r"row 0: field 'answer' must be a non-empty target text"),
    "a target the answer rule reads nothing from": (
        {"name": "custom", "kind": "generate", "template": "{question}"},
        [{"question": "q", "answer": "many"}], r"row 0: task.answer='number' reads no answer"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_rows_are_refused_before_any_work_naming_file_row_and_field(case, tiny_llama, tmp_path):
    """Validation (the flows' first step) refuses the row, names the file, and writes nothing."""
    task, rows, message = BAD[case]
    source = write(tmp_path / "mine.jsonl", rows + [rows[0]] * 3)
    root = tmp_path / "artifacts"
    cfg = RunConfig(model=ModelConfig(name=str(tiny_llama)), task=TaskConfig(**task), mode="lora-only",
                    data=DataConfig(source=str(source), holdout_size=1, valid_size=1, allow_overlap=True),
                    artifact_root=str(root), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(DataError, match=message) as e:
        validate(plan(cfg))
    assert "mine.jsonl" in str(e.value)
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))


def test_bad_task_options_are_refused_when_the_config_is_built():
    with pytest.raises(ConfigError, match="task.kind='ranking': one of"):
        TaskConfig(name="custom", kind="ranking")
    with pytest.raises(ConfigError, match="a custom task needs its kind"):
        TaskConfig(name="custom")
    with pytest.raises(ConfigError, match="task.name='squad': not a built-in task"):
        resolve(TaskConfig(name="squad"))
    with pytest.raises(ConfigError, match="task.kind='choice': task gsm8k is a generate task"):
        resolve(TaskConfig(name="gsm8k", kind="choice"))
    with pytest.raises(ConfigError, match="a choice task needs a template"):
        resolve(TaskConfig(name="custom", kind="choice"))
    with pytest.raises(ConfigError, match=r"\{0\} is not a field name"):
        resolve(TaskConfig(name="custom", kind="generate", template="{0} and {question}"))


def test_a_choice_task_on_an_encoder_is_refused_before_anything_is_written(tiny_bert, tmp_path):
    rows = [{"question": f"is the cat happy {i}", "choices": ["a", "b"], "label": 0} for i in range(20)]
    source = write(tmp_path / "mc.jsonl", rows)
    root = tmp_path / "artifacts"
    cfg = RunConfig(model=ModelConfig(name=str(tiny_bert)), task=TaskConfig(name="custom", kind="choice",
                                                                             template="{question}"),
                    data=DataConfig(source=str(source), holdout_size=5, valid_size=5),
                    artifact_root=str(root),
                    tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ConfigError, match="task.kind='choice'.*seq-cls model .*no LM head"):
        validate(plan(cfg))
    assert not root.exists() or not any(p for p in root.rglob("*") if p.is_file())


def keyword_rows(kind: str, n: int = 300) -> list[dict]:
    """The keyword task (label decided by 'happy'/'sad') as a choice or a generate task."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        happy = i % 2 == 0
        subject = rng.choice(["the cat", "a dog", "the king", "my friend"])
        question = f"is {subject} {'happy' if happy else 'sad'} today, story {i}"  # distinct rows: no overlap
        if kind == "choice":
            choices = ["true", "false"] if rng.random() < 0.5 else ["false", "true"]
            gold = choices.index("true" if happy else "false")
            rows.append({"question": question, "choices": choices, "label": gold})
        else:
            rows.append({"question": question, "answer": "true" if happy else "false"})
    return rows


@pytest.mark.parametrize("kind", ["choice", "generate"])
def test_a_users_own_task_trains_end_to_end_on_the_tiny_llama(kind, tiny_llama, tmp_path):
    """Your own JSONL through every stage: HEFT learns the keyword task as a choice task (scored
    by log-likelihood) and as a generate task (the answer word decoded and compared as text)."""
    source = write(tmp_path / "own.jsonl", keyword_rows(kind))
    task = TaskConfig(name="custom", kind=kind, template="Question: {question} Answer:",
                      **({"answer": "text", "max_new_tokens": 3} if kind == "generate" else {}))
    cfg = RunConfig(model=ModelConfig(name=str(tiny_llama), max_length=32), task=task,
                    data=DataConfig(source=str(source), holdout_size=60, valid_size=40),
                    lora=LoraConfig(epochs=4, lr=1e-2), reft=ReftConfig(epochs=2, lr=1e-2, layer=1),
                    eval=EvalConfig(batch_size=16), artifact_root=str(tmp_path / "art"))
    out = run_pipeline(cfg)
    metrics = out["eval:heft"].metrics
    assert metrics["n"] == 60 and metrics["accuracy"] > 0.85, metrics
    assert out["lora"].metrics["final_valid_accuracy"] > 0.8
    from heft.store.artifacts import ArtifactStore
    store = ArtifactStore(cfg.artifact_root)
    first = json.loads((store.local_path(out["eval:heft"]) / "predictions.jsonl").read_text().splitlines()[0])
    if kind == "choice":
        assert set(first) == {"index", "label", "pred", "pred_norm", "scores"} and len(first["scores"]) == 2
        assert metrics["chance_rate"] == 0.5 and "accuracy_norm" in metrics
    else:
        assert set(first) == {"index", "generation", "answer", "gold", "correct"}
        assert first["gold"] in ("true", "false")
    # the model exit answers as the evaluation did, from the store and from an export
    import heft
    from heft.inference.export import export
    evaluated = [json.loads(line) for line in
                 (store.local_path(out["eval:heft"]) / "predictions.jsonl").read_text().splitlines()]
    data = [json.loads(line) for line in (tmp_path / "own.jsonl").read_text().splitlines()]
    held = {r["prompt"]: r for r in map(json.loads, (store.local_path(out["data"]) / "eval.jsonl")
                                       .read_text().splitlines())}
    rows = [r for r in data if task_prompt(r) in held][:8]
    order = [list(held).index(task_prompt(r)) for r in rows]
    for model in (heft.load(out["eval:heft"].key, root=cfg.artifact_root),):
        got = model.predict(rows)
        again = heft.load(export(model, str(tmp_path / "exported"))).predict(rows)
        assert again == got
        for g, i in zip(got, order):
            if kind == "choice":
                assert g["choice"] == evaluated[i]["pred"]
                assert g["scores"] == pytest.approx(evaluated[i]["scores"])
                assert g["answer"] in ("true", "false")
            else:
                assert (g["generation"], g["answer"]) == (evaluated[i]["generation"], evaluated[i]["answer"])


def task_prompt(row: dict) -> str:
    return f"Question: {row['question']} Answer:"


def test_a_task_change_reruns_from_the_data_down_and_a_reft_change_only_reft(tiny_llama, tmp_path):
    """Plans of one generate task: another task moves every key; another ReFT layer moves only
    the ReFT step and its evaluation (the rest is reused, as for BoolQ)."""
    source = write(tmp_path / "own.jsonl", keyword_rows("generate", 40))
    cfg = RunConfig(model=ModelConfig(name=str(tiny_llama)),
                    data=DataConfig(source=str(source), holdout_size=10),
                    task=TaskConfig(name="custom", kind="generate", template="Question: {question} Answer:",
                                    answer="text"), reft=ReftConfig(layer=1), artifact_root=str(tmp_path))
    import dataclasses
    keys = {s.name: s.key for s in plan(cfg).steps}
    other_task = {s.name: s.key for s in plan(dataclasses.replace(
        cfg, task=dataclasses.replace(cfg.task, template="Q: {question} A:"))).steps}
    other_layer = {s.name: s.key for s in plan(dataclasses.replace(cfg, reft=ReftConfig(layer=2))).steps}
    assert all(keys[n] != other_task[n] for n in keys)
    assert {n for n in keys if keys[n] != other_layer[n]} == {"reft", "eval:heft"}
