import dataclasses
import json

import pytest

from heft.config import DataConfig, TaskConfig
from heft.data.task import dataset
from heft.data.sources import DataError, read_split, split_rows
from heft.plan import data_step
from heft.stages import run_step
from heft.store.artifacts import ArtifactStore


def data_key(cfg: DataConfig) -> str:
    return data_step(dataset(TaskConfig(), cfg)).key


def run_data(cfg: DataConfig, store: ArtifactStore):
    return run_step(data_step(dataset(TaskConfig(), cfg)), None, store)


def test_resplit_of_shared_validation_is_recorded_and_deterministic(boolq_validation, tmp_path):
    cfg = DataConfig(source=str(boolq_validation), holdout_size=1000, valid_size=400)
    rows, record = split_rows(cfg)
    assert record["resplit"] is True
    assert [len(rows[s]) for s in ("train", "valid", "eval")] == [1870, 400, 1000]
    again, _ = split_rows(cfg)
    assert again["eval"] == rows["eval"]

    def questions(s):
        return {r["question"] for r in rows[s]}
    assert not questions("train") & questions("eval") and not questions("valid") & questions("eval")
    other, _ = split_rows(DataConfig(source=str(boolq_validation), split_seed=1))
    assert other["eval"] != rows["eval"]

    store = ArtifactStore(str(tmp_path / "art"))
    art = run_data(cfg, store)
    assert art.metrics["n_eval"] == 1000 and 0.55 < art.metrics["majority_eval"] < 0.7
    assert read_split(store.local_path(art), "eval") == rows["eval"]
    assert run_data(cfg, store).meta["created"] == art.meta["created"]  # reused, not rebuilt


def test_question_format_from_two_files(boolq_validation):
    train = boolq_validation.parent / "train_no_passage.jsonl"
    cfg = DataConfig(source=str(train), eval_source=str(boolq_validation), format="question",
                     valid_size=100, max_eval=50)
    rows, record = split_rows(cfg)
    assert record["resplit"] is False
    assert len(rows["train"]) == 9427 - 100 and len(rows["eval"]) == 50


def test_passage_format_refuses_question_only_rows(boolq_validation):
    train = boolq_validation.parent / "train_no_passage.jsonl"
    with pytest.raises(DataError, match=r"train_no_passage.jsonl: row 0: field 'passage'"):
        split_rows(DataConfig(source=str(train), eval_source=str(boolq_validation)))


def test_folder_source_picks_train_and_validation(boolq_validation):
    rows, record = split_rows(DataConfig(source=str(boolq_validation.parent), format="question",
                                         valid_size=10))
    assert record["sources"]["train"].endswith("train_no_passage.jsonl")
    assert record["sources"]["eval"].endswith("validation.jsonl")


@pytest.mark.parametrize("row,needle", [
    ({"passage": "p", "label": True}, "row 1: missing field 'question'"),
    ({"question": "q", "passage": "p", "label": "yes"}, "row 1: field 'label' must be a boolean"),
    ({"question": "", "passage": "p", "label": True}, "row 1: field 'question'"),
    ({"question": "q", "passage": None, "label": True}, "row 1: field 'passage'"),
])
def test_bad_rows_named(tmp_path, row, needle):
    path = tmp_path / "bad.jsonl"
    good = {"question": "q", "passage": "p", "label": False}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match=needle):
        split_rows(DataConfig(source=str(path), holdout_size=1, valid_size=1))


def test_missing_source_and_edited_file_changes_key(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data_key(DataConfig(source=str(tmp_path / "nope.jsonl")))
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "passage": "p", "label": True}) + "\n")
    before = data_key(DataConfig(source=str(path)))
    path.write_text(json.dumps({"question": "q", "passage": "p", "label": False}) + "\n")
    assert data_key(DataConfig(source=str(path))) != before


def test_fsspec_url_source(boolq_validation):
    import fsspec
    with fsspec.open("memory://boolq/validation.jsonl", "wb") as f:
        f.write(boolq_validation.read_bytes())
    rows, _ = split_rows(DataConfig(source="memory://boolq/validation.jsonl"))
    assert len(rows["eval"]) == 1000


def test_official_split_protocol_counts_and_no_dev_question_in_training(boolq_validation):
    """The presets' protocol: official train rows with passages (400 carved out for validation,
    seeded and recorded), the whole official dev split held out, no dev question in training."""
    cfg = DataConfig(source=str(boolq_validation.parent / "train_partial_with_passage.jsonl"),
                     eval_source=str(boolq_validation), valid_size=400, split_seed=0)
    rows, record = split_rows(cfg)
    assert [len(rows[s]) for s in ("train", "valid", "eval")] == [4546, 400, 3270]
    assert record["resplit"] is False and record["overlap"]["eval_rows_seen"] == 0
    assert record["sources"]["train"].endswith("train_partial_with_passage.jsonl")
    dev = {r["question"].lower() for r in rows["eval"]}
    assert not dev & {r["question"].lower() for r in rows["train"] + rows["valid"]}
    assert sum(r["label"] for r in rows["eval"]) == 2033  # majority rate 62.17%
    assert set(rows["train"][0]) == {"question", "passage", "label"}  # idx and title dropped
    again, _ = split_rows(dataclasses.replace(cfg, split_seed=1))
    assert again["valid"] != rows["valid"] and again["eval"] == rows["eval"]


def test_holdout_size_with_a_separate_eval_source_is_an_error(boolq_validation, tmp_path):
    from heft.config import ConfigError
    with pytest.raises(ConfigError, match=r"data.holdout_size=500: does nothing with data.eval_source"):
        DataConfig(source="x.jsonl", eval_source=str(boolq_validation), holdout_size=500)
    folder = boolq_validation.parent  # a folder source holding its own validation split
    with pytest.raises(DataError, match=r"data.holdout_size=500: .* has its own held-out split"):
        split_rows(DataConfig(source=str(folder), format="question", holdout_size=500))


def test_leakage_between_training_and_held_out_rows_is_refused(boolq_validation, tmp_path):
    same = DataConfig(source=str(boolq_validation), eval_source=str(boolq_validation), valid_size=400)
    with pytest.raises(DataError, match=r"3270 of the 3270 held-out rows also occur in the training \(2870\) "
                                        r"or validation \(400\) part"):
        split_rows(same)
    assert split_rows(dataclasses.replace(same, allow_overlap=True))[1]["overlap"]["eval_rows_seen"] == 3270
    rows = [json.loads(line) for line in boolq_validation.read_text().splitlines()[:100]]
    doubled = tmp_path / "doubled.jsonl"  # every row twice: a re-split puts copies on both sides
    doubled.write_text("".join(json.dumps(r) + "\n" for r in rows + rows))
    with pytest.raises(DataError, match=r"of the 50 held-out rows also occur in the training"):
        split_rows(DataConfig(source=str(doubled), holdout_size=50, valid_size=10))


GOOD = {"question": "is it", "passage": "A story.", "label": True}


def odd_file(tmp_path, odd: bytes, rows: int = 3000):
    """A ~250 KB file whose row ``rows`` is ``odd``: the error must not carry the file."""
    path = tmp_path / "odd.jsonl"
    path.write_bytes((json.dumps(GOOD) + "\n").encode() * rows + odd + b"\n" + json.dumps(GOOD).encode())
    return path


@pytest.mark.parametrize("odd,needle", [
    ('{"question": "caf\xe9 ol\xe9", "passage": "p", "label": true}'.encode("latin-1"),
     "row 3000: not UTF-8 text (byte 0xe9 at offset 17 of the line, near "
     "b'{\"question\": \"caf\\xe9 ol\\xe9\", \"passage\": \"p\",')"),
    (b"42", 'row 3000: expected a JSON object such as {"question": ...}, got int 42'),
    (b'["is it", true]', 'row 3000: expected a JSON object such as {"question": ...}, got list ["is it"'),
])
def test_odd_lines_name_the_file_and_row_with_a_short_excerpt(tmp_path, odd, needle):
    path = odd_file(tmp_path, odd)
    with pytest.raises(DataError) as err:
        split_rows(DataConfig(source=str(path), holdout_size=10, valid_size=10))
    assert str(err.value).startswith(f"{path}: {needle}"), str(err.value)
    assert len(str(err.value)) < 300


@pytest.mark.parametrize("odd,needle", [(b'{"question": "caf\xe9"}', "row 2: not UTF-8 text"),
                                        (b"42", "row 2: expected a JSON object")])
def test_predict_input_with_odd_lines_is_refused_naming_file_and_row(tmp_path, capsys, odd, needle):
    from argparse import Namespace
    from flows.model_cli import predict_command
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"question": "is it"}\n\n' + odd + b"\n")
    args = Namespace(model="0" * 20, question=None, passage=None, choice=None, field=None, input=str(path),
                     output=None, root=None,
                     tracking_uri=None, batch_size=8)
    assert predict_command(args) == 2
    assert capsys.readouterr().err.startswith(f"heft: error: {path}: {needle}")
