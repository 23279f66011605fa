"""Questions longer than the model's max_length, by the stated rule of heft/data/batching.py:
a question keeps at most half of max_length tokens, the passage fills the rest.  Before, an
encoder's tokenizer failed mid-stage ("Sequence to truncate too short") and a causal LM's
left truncation silently dropped the whole passage.  Validation reports such rows up front,
and ``predict`` warns when it cuts one."""
from __future__ import annotations

import json

import pytest

from heft.data.batching import encode
from heft.modeling import models

LONG = "is the cat happy today " * 40       # 200 words: far beyond max_length=32
PASSAGE = "a short story"


@pytest.mark.parametrize("family", ["seq-cls", "causal-lm"])
def test_an_overlong_question_keeps_half_and_the_passage_follows(tiny_bert, tiny_llama, family, caplog):
    folder = tiny_bert if family == "seq-cls" else tiny_llama
    tok = models.load_tokenizer(str(folder), family)
    rows = [{"question": LONG, "passage": PASSAGE, "label": True},
            {"question": "is the dog sad", "passage": PASSAGE, "label": False}]
    with caplog.at_level("WARNING"):
        enc = encode(rows, tok, "passage", family, 32)
    assert [len(ids) <= 32 for ids in enc.input_ids] == [True, True]
    assert enc.cut_questions == [0]
    text = tok.decode(enc.input_ids[0])
    assert "story" in text and text.count("cat") == 3  # 16 tokens: "is the cat happy today is the cat ..."
    assert "1 of 2 rows: question longer than 16 tokens (half of max_length=32)" in caplog.text
    short = encode(rows[1:], tok, "passage", family, 32)  # nothing changes for rows that fit
    assert short.input_ids[0] == enc.input_ids[1] and short.cut_questions == []


def test_a_one_megabyte_question_to_predict_is_cut_with_a_warning(tiny_bert, caplog):
    from heft.inference.model import HeftModel
    tok = models.load_tokenizer(str(tiny_bert), "seq-cls")
    model = HeftModel(model=models.load_model(str(tiny_bert), "seq-cls").eval(), tokenizer=tok,
                      family="seq-cls", pooling="cls", format="passage", max_length=32)
    huge = ("is the cat happy today " * 50_000)[:1_000_000]
    with caplog.at_level("WARNING"):
        (out,) = model.predict([{"question": huge, "passage": PASSAGE}])
    assert 0 <= out["probability"] <= 1
    assert "question longer than 16 tokens" in caplog.text


def test_validation_reports_overlong_questions_up_front(tiny_bert, keyword_data, tmp_path, caplog):
    from heft.config import DataConfig, ModelConfig, RunConfig
    from heft.plan import plan
    from heft.run.validate import validate
    rows = [json.loads(line) for line in keyword_data.read_text().splitlines()[:200]]
    rows[7]["question"] = LONG
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig(model=ModelConfig(name=str(tiny_bert), max_length=32), mode="lora-only",
                    data=DataConfig(source=str(data), holdout_size=50, valid_size=20),
                    artifact_root=str(tmp_path / "art"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    with caplog.at_level("WARNING"):
        checked = validate(plan(cfg))
    assert sum(checked.cut_questions.values()) == 1
    assert "question longer than 16 tokens (half of model.max_length=32)" in caplog.text
