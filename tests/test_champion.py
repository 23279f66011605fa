"""The champion rule and the grid's verdict: a grid's best cell and the model it registers are
chosen by validation accuracy, never by held-out accuracy; a tie is called a tie, with how it
was broken; a constant predictor is flagged; and a registered version becomes champion only
when it beats the champion on the same data.  Constructed cells; no training, no Prefect
server (the registry task runs as a plain function on a sqlite MLflow store)."""
from __future__ import annotations

import dataclasses

import pytest

from heft.config import RunConfig
from heft.grids.spec import Cell, GridSpec
from heft.grids.report import CellResult, best_row, champion, write_report
from heft.run.result import RunResult, StageRow

# (label, validation accuracy, held-out accuracy): the held-out ranking is A, C, B; the
# validation ranking B, A (C is an untrained cell: no validation accuracy at all)
CELLS = [("A held-out best", 0.70, 0.80), ("B validation best", 0.90, 0.60), ("C untrained", None, 0.75)]


def constructed(tmp_path, cells_spec=CELLS, true_rates=None, data_key="data-key-1"):
    """Cells, their report results and run results, from (label, validation, held-out) rows;
    ``true_rates``: each cell's share of held-out rows answered 'true' (default 0.5)."""
    cells, results, runs = [], [], []
    for i, (label, valid, heldout) in enumerate(cells_spec):
        cell = Cell(label, 0, RunConfig(artifact_root=str(tmp_path)), {})
        metrics = {"accuracy": heldout, "ci95_low": heldout - 0.05, "ci95_high": heldout + 0.05,
                   "majority_rate": 0.6, "n": 100, "predicted_true_rate": (true_rates or {}).get(label, 0.5)}
        run = RunResult(results={cell.final_eval: metrics}, final=cell.final_eval,
                        stages=(StageRow("lora", "k", "Completed", "ran"),), validation_accuracy=valid,
                        mlflow_run_id=f"cell-run-{i}", seconds=1.0,
                        model={"key": f"key-{i}", "uri": f"runs:/source-{i}/model"},
                        validation_rows=400, data_key=data_key)
        cells.append(cell)
        results.append(CellResult.of(cell, run))
        runs.append(run)
    return cells, results, runs


def test_champion_is_the_best_validation_accuracy_first_of_equals():
    assert champion([0.7, 0.9, None]) == 1
    assert champion([0.8, 0.6, 0.8]) == 0  # a tie goes to the first cell
    assert champion([None, None]) is None and champion([]) is None


def test_the_grid_report_marks_the_validation_winner_not_the_held_out_one(tmp_path):
    cells, results, _ = constructed(tmp_path)
    report = write_report(tmp_path / "report", GridSpec(name="champion"), cells, results)
    assert report["best"]["label"] == "B validation best"
    assert report["best"]["metrics"] == {"best_valid_accuracy": 0.90, "best_heldout_accuracy": 0.60,
                                         "best_heldout_minus_majority": pytest.approx(0.0),
                                         "best_valid_margin": pytest.approx(0.2)}
    assert best_row(report["rows"])["label"] == "B validation best"
    assert "**Best cell by validation accuracy: B validation best**" in report["markdown"]
    starred = [line for line in report["markdown"].splitlines() if "★ |" in line]
    assert len(starred) == 1 and starred[0].startswith("| B validation best |")


def test_the_registered_champion_is_the_validation_winner(tmp_path, monkeypatch):
    import flows.grid_flow as grid_flow
    calls = []

    def recorder(name, model_uri, run_id, tracking_uri, tags, description, valid, data_key):
        calls.append((name, model_uri, run_id, tags, description))  # stands in for the registry task
        return {"version": "7", "alias": "champion", "why": "no champion before it"}
    monkeypatch.setattr(grid_flow, "register_task", recorder)
    cells, results, runs = constructed(tmp_path)
    out = grid_flow.register_best("heft-champion", cells, results, runs, "sqlite:///unused.db", "champion")
    assert out["version"] == "7" and out["cell"] == "B validation best seed=0" and out["alias"] == "champion"
    ((name, model_uri, run_id, tags, description),) = calls
    # the version comes from the model the cell found, and points at the cell's own run
    assert (name, model_uri, run_id) == ("heft-champion", "runs:/source-1/model", "cell-run-1")
    assert tags["heft.cell"] == "B validation best" and tags["heft.model.key"] == "key-1"
    # readable tags: percentages, not raw floats; the model and task named outside the config blob
    assert (tags["valid_accuracy"], tags["heldout_accuracy"]) == ("90.00%", "60.00%")
    assert tags["heft.model"] == RunConfig().model.name and tags["heft.data.key"] == "data-key-1"
    assert description.startswith("all-MiniLM-L6-v2 · task boolq · "
                                  "B validation best (HEFT (LoRA->ReFT)) · validation 90.00% of 400 rows · "
                                  "held-out 60.00% (95% CI 55.00%-65.00%, n=100) · majority rate 60.00%")


def rows_of(tmp_path, cells_spec, true_rates=None):
    cells, results, _ = constructed(tmp_path, cells_spec, true_rates)
    report = write_report(tmp_path / "report", GridSpec(name="verdict"), cells, results)
    return report, report["markdown"]


def test_a_tie_is_called_a_tie_and_says_how_the_pick_was_broken(tmp_path):
    report, text = rows_of(tmp_path, [("L1", 0.6175, 0.62), ("L2", 0.6175, 0.64), ("L3", 0.6175, 0.61),
                                      ("L4", 0.60, 0.70)])
    assert report["best"]["label"] == "L1" and report["best"]["tie"]
    assert report["best"]["pick"].startswith("a tie: L1, L2 and L3 all have validation 61.75%")
    assert ("**A tie, not a winner:** L1, L2 and L3 all have validation 61.75%; L1 is named only "
            "because it comes first in grid order, not because it is better.") in text
    assert "| 61.75% ★ (tie) |" in text and "Margin" not in text
    assert report["best"]["metrics"]["best_valid_margin"] == 0.0


def test_the_margin_over_the_runner_up_in_points_and_rows(tmp_path):
    report, text = rows_of(tmp_path, [("L1", 0.6125, 0.62), ("L2", 0.6175, 0.64), ("L3", 0.5, 0.61)])
    assert not report["best"]["tie"]
    assert ("**Margin:** +0.50 points of validation accuracy over the runner-up L1 (61.25%): "
            "2 of 400 validation rows.") in text
    assert report["best"]["metrics"]["best_valid_margin"] == pytest.approx(0.005)


def test_a_constant_predictor_is_flagged(tmp_path):
    report, text = rows_of(tmp_path, [("always true", 0.62, 0.60), ("learns", 0.61, 0.66)],
                           true_rates={"always true": 1.0, "learns": 0.55})
    assert ("**Constant predictors** (one answer on every held-out row: the accuracy is only that answer's "
            "share of the rows): always true (always 'true').") in text
    assert "The best cell is one of them: it has learnt nothing beyond answering 'true'." in text
    assert "| always true | HEFT (LoRA->ReFT) |" in text and "| always true ⚠ |" in text
    assert "| learns |" in text and "| varied |" in text
    assert report["best"]["constant"] == ["always true"]


def register_grid(tmp_path, db, cells_spec, data_key="data-key-1", monkeypatch=None):
    """register_best on a sqlite MLflow store: the cells' runs exist (with their validation
    accuracy) and a model folder stands in for each cell's logged model."""
    import flows.grid_flow as grid_flow
    from mlflow import MlflowClient

    from tasks.models import register_task
    monkeypatch.setattr(grid_flow, "register_task", register_task.fn)  # the task's body, no Prefect
    client = MlflowClient(db)
    exp = client.get_experiment_by_name("heft") or client.get_experiment(client.create_experiment("heft"))
    cells, results, runs = constructed(tmp_path, cells_spec, data_key=data_key)
    for i, (cell, run) in enumerate(zip(cells, runs)):
        mlflow_run = client.create_run(exp.experiment_id, run_name=cell.run_name)
        client.log_metric(mlflow_run.info.run_id, "valid_accuracy", run.validation_accuracy)
        model = tmp_path / f"model-{mlflow_run.info.run_id}"
        model.mkdir(parents=True)
        runs[i] = dataclasses.replace(run, mlflow_run_id=mlflow_run.info.run_id, model={
            "key": f"key-{i}", "uri": str(model)})
    return grid_flow.register_best("heft-boolq", cells, results, runs, db, "g")


def test_register_keeps_the_champion_when_the_new_version_is_worse(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    db = f"sqlite:///{tmp_path}/mlflow.db"
    first = register_grid(tmp_path / "a", db, [("A", 0.70, 0.70), ("B", 0.65, 0.72)], monkeypatch=monkeypatch)
    assert (first["version"], first["alias"]) == ("1", "champion")
    worse = register_grid(tmp_path / "b", db, [("C", 0.68, 0.90)], monkeypatch=monkeypatch)
    assert (worse["version"], worse["alias"]) == ("2", "challenger")
    assert worse["why"] == "validation 68.00% is below champion v1's 70.00%: champion v1 stays"
    tie = register_grid(tmp_path / "c", db, [("D", 0.70, 0.71)], monkeypatch=monkeypatch)
    assert tie["alias"] == "challenger" and "ties champion v1's 70.00%" in tie["why"]
    other = register_grid(tmp_path / "d", db, [("E", 0.95, 0.5)], data_key="data-key-2",
                          monkeypatch=monkeypatch)
    assert other["alias"] == "challenger" and "chosen on other data" in other["why"]
    client = MlflowClient(db, registry_uri=db)
    assert str(client.get_model_version_by_alias("heft-boolq", "champion").version) == "1"
    better = register_grid(tmp_path / "e", db, [("F", 0.75, 0.6)], monkeypatch=monkeypatch)
    assert (better["version"], better["alias"]) == ("5", "champion")
    assert better["why"] == "validation 75.00% beats champion v1's 70.00%"
    champion_now = client.get_model_version_by_alias("heft-boolq", "champion")
    assert str(champion_now.version) == "5" and champion_now.tags["heft.alias_given"] == "champion"
    assert client.get_run(champion_now.run_id).info.run_name == "F seed=0"  # the version points at the cell
    assert str(client.get_model_version_by_alias("heft-boolq", "challenger").version) == "4"
