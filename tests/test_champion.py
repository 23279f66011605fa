"""The champion rule: a grid's best cell and the model it registers are chosen by validation
accuracy, never by held-out accuracy.  Constructed cells whose two rankings disagree; no
training, no Prefect server (the registry call is replaced by a recorder)."""
from __future__ import annotations

import pytest

from heft.config import RunConfig
from heft.grids.spec import Cell, GridSpec
from heft.grids.report import CellResult, best_row, champion, write_report
from heft.run.result import RunResult, StageRow

# (label, validation accuracy, held-out accuracy): the held-out ranking is A, C, B; the
# validation ranking B, A (C is an untrained cell: no validation accuracy at all)
CELLS = [("A held-out best", 0.70, 0.80), ("B validation best", 0.90, 0.60), ("C untrained", None, 0.75)]


def constructed(tmp_path) -> tuple[list[Cell], list[CellResult], list[RunResult]]:
    cells, results, runs = [], [], []
    for i, (label, valid, heldout) in enumerate(CELLS):
        cell = Cell(label, 0, RunConfig(artifact_root=str(tmp_path)), {})
        metrics = {"accuracy": heldout, "ci95_low": heldout - 0.05, "ci95_high": heldout + 0.05,
                   "majority_rate": 0.6, "n": 100}
        run = RunResult(results={cell.final_eval: metrics}, final=cell.final_eval,
                        stages=(StageRow("lora", "k", "Completed", "ran"),), validation_accuracy=valid,
                        mlflow_run_id=f"cell-run-{i}", seconds=1.0,
                        model={"key": f"key-{i}", "uri": f"runs:/source-{i}/model"})
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
                                         "best_heldout_minus_majority": pytest.approx(0.0)}
    assert best_row(report["rows"])["label"] == "B validation best"
    assert "**Best cell by validation accuracy: B validation best**" in report["markdown"]
    starred = [line for line in report["markdown"].splitlines() if "★ |" in line]
    assert len(starred) == 1 and starred[0].startswith("| B validation best |")


def test_the_registered_champion_is_the_validation_winner(tmp_path, monkeypatch):
    import flows.grid_flow as grid_flow
    calls = []

    def recorder(name, source_run, tracking_uri, tags):  # stands in for the MLflow registry task
        calls.append((name, source_run, tags))
        return "7"
    monkeypatch.setattr(grid_flow, "register_task", recorder)
    cells, results, runs = constructed(tmp_path)
    out = grid_flow.register_best("heft-champion", cells, results, runs, "sqlite:///unused.db", "champion")
    assert out == {"version": "7", "cell": "B validation best seed=0"}
    ((name, source_run, tags),) = calls
    assert (name, source_run) == ("heft-champion", "source-1")
    assert tags["heft.cell"] == "B validation best" and tags["heft.model.key"] == "key-1"
    assert (tags["valid_accuracy"], tags["heldout_accuracy"]) == (0.90, 0.60)
