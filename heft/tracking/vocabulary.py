"""The MLflow names heft logs: one small vocabulary, each name meaning one thing, the same
name at every level where it appears (pipeline run = grid cell, stage run, grid run).

``pipeline_metrics`` and ``stage_metrics`` map what an artifact records (meta.json,
history.json) onto these names; nothing else is logged, so a run never carries two names for
one number.  docs/design.md lists these names for readers of the MLflow UI.
"""
from __future__ import annotations

# name -> meaning; {evaluation} is one of lora, merged, reft (the non-final evaluations)
PIPELINE = {
    "heldout_accuracy": "accuracy of the run's final model on the held-out split",
    "heldout_ci95_low": "lower end of its 95% Wilson interval",
    "heldout_ci95_high": "upper end of its 95% Wilson interval",
    "heldout_majority_rate": "accuracy of always giving the held-out majority answer",
    "heldout_accuracy_{evaluation}": "held-out accuracy of an intermediate model of the run",
    "valid_accuracy": "validation accuracy of the final model (what model selection reads)",
    "heldout_predicted_true_rate": "share of held-out rows the final model answered 'true' (0, 1: constant)",
    "total_epochs": "LoRA + ReFT epochs the run trained",
    "lora_epochs": "LoRA epochs the run trained (0: no LoRA stage)",
    "reft_epochs": "ReFT epochs the run trained (0: no ReFT stage)",
}
TRAINING = {  # lora and reft stage runs; the step axis is optimizer steps
    "train_loss": "training loss of one optimizer step (every N steps)",
    "learning_rate": "learning rate at that step",
    "epoch": "epochs completed at that step (the x axis for the per-epoch metrics)",
    "epoch_train_loss": "mean training loss over an epoch",
    "valid_accuracy": "validation accuracy after an epoch",
    "epoch_seconds": "wall seconds of an epoch's training steps",
    "examples_per_second": "training throughput of an epoch",
    "trainable_params": "parameters the stage trains",
    "resumed_from_epoch": "epoch the stage resumed after (0: trained from the start)",
    "rotation_orthonormality_error": "reft: max |R^T R - I| of the trained rotation",
    "intervention_mean_abs_score_change": "reft: how much the intervention moves the scores",
}
EVALUATION = {  # evaluate stage runs
    "eval_accuracy": "accuracy of the evaluated model on the held-out split",
    "eval_ci95_low": "lower end of its 95% Wilson interval",
    "eval_ci95_high": "upper end of its 95% Wilson interval",
    "eval_rows": "held-out rows scored",
    "predicted_true_rate": "share of rows answered 'true'",
}
OTHER_STAGES = {
    "rows_train": "data: training rows", "rows_valid": "data: validation rows",
    "rows_eval": "data: held-out rows",
    "merge_max_abs_diff": "merge: largest change of any output, adapter vs merged",
    "merge_rel_diff": "merge: that change relative to the outputs' scale (float32)",
    "merge_dtype_rounding": "merge: output change from rounding the merged weights to the model's dtype",
}
GRID = {
    "best_valid_accuracy": "validation accuracy of the best cell (chosen by it)",
    "best_heldout_accuracy": "held-out accuracy of that cell",
    "best_heldout_minus_majority": "its held-out accuracy minus the held-out majority rate",
    "best_valid_margin": "its validation accuracy minus the runner-up's (0: a tie)",
    "cells": "cells in the grid", "steps_built": "steps that ran", "steps_reused": "steps found built",
    "wall_seconds": "wall time of the grid",
}
INTERMEDIATE = ("lora", "merged", "reft")

# artifact metric -> MLflow name, per stage (absent: not logged)
_EVALUATE = {"accuracy": "eval_accuracy", "ci95_low": "eval_ci95_low", "ci95_high": "eval_ci95_high",
             "n": "eval_rows", "predicted_true_rate": "predicted_true_rate"}
_TRAIN_FINAL = {"trainable_params": "trainable_params", "resumed_from_epoch": "resumed_from_epoch",
                "rotation_orthonormality_error": "rotation_orthonormality_error",
                "intervention_mean_abs_score_change": "intervention_mean_abs_score_change"}
_EPOCH = {"train_loss": "epoch_train_loss", "valid_accuracy": "valid_accuracy",
          "epoch_seconds": "epoch_seconds", "train_examples_per_second": "examples_per_second"}
_STAGE = {"evaluate": _EVALUATE, "lora": _TRAIN_FINAL, "reft": _TRAIN_FINAL,
          "data": {"n_train": "rows_train", "n_valid": "rows_valid", "n_eval": "rows_eval"},
          "merge": {"merge_max_abs_diff": "merge_max_abs_diff", "merge_rel_diff": "merge_rel_diff",
                    "merge_dtype_rounding": "merge_dtype_rounding"},
          "base": {}}


def stage_metrics(stage: str, metrics: dict) -> dict[str, float]:
    """A finished artifact's final metrics under the vocabulary's names."""
    names = _STAGE[stage]
    return {names[k]: float(v) for k, v in metrics.items() if k in names and isinstance(v, (int, float))}


def epoch_metrics(metrics: dict) -> dict[str, float]:
    """One history.json epoch under the vocabulary's names."""
    return {_EPOCH[k]: float(v) for k, v in metrics.items() if k in _EPOCH and isinstance(v, (int, float))}


def pipeline_metrics(results: dict[str, dict], final: str, valid: float | None,
                     epochs: dict[str, int]) -> dict:
    """{'heldout_accuracy': ..., 'heldout_accuracy_lora': ...} from {evaluation: metrics};
    ``epochs``: {training stage: epochs trained} (heft/plan.py ``trained_epochs``)."""
    m = results[final]
    out = {"heldout_accuracy": m["accuracy"], "heldout_ci95_low": m["ci95_low"],
           "heldout_ci95_high": m["ci95_high"], "heldout_majority_rate": m["majority_rate"],
           "total_epochs": sum(epochs.values()), "lora_epochs": epochs.get("lora", 0),
           "reft_epochs": epochs.get("reft", 0)}
    if "predicted_true_rate" in m:
        out["heldout_predicted_true_rate"] = m["predicted_true_rate"]
    out |= {f"heldout_accuracy_{name}": r["accuracy"] for name, r in results.items() if name != final}
    if valid is not None:
        out["valid_accuracy"] = valid
    return out


def all_names() -> dict[str, dict[str, str]]:
    """Every name by level (docs/design.md lists them; tests check they do not collide)."""
    pipeline = {k: v for k, v in PIPELINE.items() if "{" not in k}
    pipeline |= {f"heldout_accuracy_{e}": PIPELINE["heldout_accuracy_{evaluation}"] for e in INTERMEDIATE}
    return {"pipeline": pipeline, "training": TRAINING, "evaluation": EVALUATION,
            "other stages": OTHER_STAGES, "grid": GRID}
