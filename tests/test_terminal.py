"""What the `heft` command prints (flows/console.py): heft's event lines with the time, the
libraries' chatter and known-harmless warnings kept out unless --verbose, everything set back
afterwards; the final tables; the grid's ETA from the plan.  No training, no Prefect server."""
from __future__ import annotations

import logging
import warnings

import pytest

from flows.console import grid_summary, run_summary, terminal
from heft.progress import say
from heft.run.result import RunResult, StageRow


def test_the_default_output_is_events_not_chatter(capsys, recwarn):
    mlflow_log = logging.getLogger("mlflow.system_metrics.system_metrics_monitor")
    with terminal():
        say("lora · seed=0: started")
        mlflow_log.info("Started monitoring system metrics.")  # MLflow's INFO chatter
        warnings.warn("\x1b[33mAdd type hints to the `predict` method to enable data validation\x1b[0m",
                      UserWarning)  # MLflow's, coloured
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6", FutureWarning)
        warnings.warn("a warning that matters", UserWarning)
    err = capsys.readouterr().err
    assert err.splitlines()[0][8:] == " lora · seed=0: started" and err[2] == ":"  # 'HH:MM:SS lora · ...'
    assert "monitoring system metrics" not in err
    # the warnings shown (pytest records what would reach stderr): only the one that matters
    assert [str(w.message) for w in recwarn] == ["a warning that matters"]
    # set back afterwards: the events go on to whatever logging the caller has
    assert logging.getLogger("heft.events").propagate and logging.getLogger("mlflow").level != logging.WARNING


def test_verbose_keeps_the_chatter(recwarn):
    with terminal(verbose=True):
        warnings.warn("Add type hints to the `predict` method", UserWarning)
    assert [str(w.message) for w in recwarn] == ["Add type hints to the `predict` method"]


def result(rate: float) -> RunResult:
    metrics = {"accuracy": 0.611, "ci95_low": 0.5804, "ci95_high": 0.6407, "n": 1000,
               "majority_rate": 0.611, "predicted_true_rate": rate}
    lora = dict(metrics, accuracy=0.588, predicted_true_rate=0.4)
    return RunResult(results={"lora": lora, "heft": metrics},
                     final="heft", stages=(StageRow("data", "k", "Cached", "reused"),
                                           StageRow("lora", "k2", "Completed", "ran")),
                     validation_accuracy=0.6175, validation_rows=400,
                     model={"key": "cb319091e97a47ce8a9f", "uri": "runs:/abc/model"})


def test_heft_run_ends_with_a_table_not_a_json_dump():
    lines = run_summary(result(1.0), 121.0, {"MLflow run": "http://mlflow/run"})
    assert lines[0].split() == ["evaluation", "held-out", "95%", "CI", "n", "majority", "answers"]
    assert lines[1].split()[:3] == ["lora", "58.80%", "58.04%-64.07%"] and lines[1].endswith("varied")
    assert lines[2].startswith("heft ★") and lines[2].endswith("always true (constant)")
    assert lines[3] == ("★ the run's model: validation 61.75% of 400 rows; 2 steps, 1 built, 1 cached, "
                        "2 min 01 s")
    assert lines[4].startswith("model cb319091e97a47ce8a9f (runs:/abc/model): heft predict --model")
    assert lines[5] == "MLflow run: http://mlflow/run" and not any(line.startswith("{") for line in lines)


def test_heft_grid_ends_with_its_cells_and_the_verdict():
    row = {"label": "A", "title": "A", "valid_mean": 0.6175, "mean": 0.611, "std": 0.0,
           "accuracies": [0.611], "ci95_low": 0.58, "ci95_high": 0.64, "constant": "true", "ran": 7,
           "cached": 0, "majority_rate": 0.611}
    out = {"rows": [row, dict(row, label="B", title="B", constant=None, ran=2, cached=5)],
           "best": {"label": "A", "constant": ["A"],
                    "pick": "a tie: A and B all have validation 61.75%; A is named for its place"},
           "report_dir": ".heft/reports/g", "seconds": 330.0, "links": {"MLflow grid run": "http://x"},
           "registered": {"version": "2", "alias": "challenger",
                          "why": "validation 61.75% ties champion v1's"}}
    lines = grid_summary(out)
    assert lines[1].split()[:3] == ["A", "61.75%", "★"] and "always true (constant)" in lines[1]
    assert lines[2].split()[0] == "B" and "varied" in lines[2] and lines[2].endswith("2/5")
    assert lines[3].startswith("★ best by validation: a tie: A and B")
    assert "constant predictors (one answer on every held-out row): A" in lines
    assert "registered version 2 as challenger: validation 61.75% ties champion v1's" in lines
    assert lines[-1] == "MLflow grid run: http://x"


def test_the_grid_eta_is_the_plans_prediction_scaled_by_the_steps_measured(stories):
    from heft.grids.plan import Eta, GridPlan, plan_cells
    from heft.grids.spec import expand, load_grid
    cells = expand(load_grid("deployments/grids/reft-layers.yaml", ["preset=deployments/stories-boolq.yaml"]))
    steps = list(GridPlan.of(cells, plan_cells(cells)).steps.values())
    eta = Eta(steps, set(), workers=1)
    assert eta.left() is None  # no row counts before the data step
    rows = {"n_train": 1000, "n_valid": 400, "n_eval": 1000}
    eta.done(steps[0], 1.0, rows)
    predicted = eta.left()
    assert predicted == pytest.approx(sum(eta.costs.values()) - eta.costs[steps[0].key])
    eta.done(steps[1], 1.0, rows)
    lora = steps[2]
    eta.done(lora, eta.costs[lora.key] / 2, {})  # LoRA took half its prediction: the rest will too
    left = sum(c for k, c in eta.costs.items() if k not in {s.key for s in steps[:3]})
    measured = 1.0 + 1.0 + eta.costs[lora.key] / 2
    assert eta.left() == pytest.approx(left * measured / (eta.costs[steps[0].key] + eta.costs[steps[1].key]
                                                          + eta.costs[lora.key]))
