"""Evaluate: accuracy on the held-out split of whatever model the parent's lineage names,
with the intervention applied (heft/modeling/answering.py: the answer words' scores, every
choice's log-likelihood, or a greedy generation and the answer read from it).

predictions.jsonl keeps every row's answer beside its gold one: the label and both scores; the
chosen index, the length-normalised choice and every choice's score; or the generation, the
answer extracted from it, the gold answer and the verdict.
"""
from __future__ import annotations

import json
from collections import Counter

from heft.config import EvalConfig
from heft.data.task import Task
from heft.modeling import models
from heft.modeling.answering import correct
from heft.stages import Context
from heft.stages.inputs import StageInputs, artifact_ref
from heft.stats import wilson_interval
from heft.store.artifacts import Artifact, Built


def gold(row: dict):
    return row["answer"] if "answer" in row else int(row["label"])


def summarize(task: Task, rows: list[dict], outputs: list[dict]) -> dict:
    """Accuracy with its 95% Wilson interval and the floors it is read against: the majority
    rate (always the most common gold answer) and, for a choice task, the chance rate."""
    n = len(rows)
    right = sum(correct(task, r, o) for r, o in zip(rows, outputs))
    low, high = wilson_interval(right, n)
    common = Counter(str(gold(r)) for r in rows).most_common(1)[0][1]
    out = {"accuracy": right / n, "correct": right, "n": n, "ci95_low": low, "ci95_high": high,
           "majority_rate": common / n}
    if task.kind == "label":
        out["predicted_true_rate"] = sum(o["pred"] for o in outputs) / n
    if task.kind == "choice":
        out["accuracy_norm"] = sum(o["pred_norm"] == r["label"] for r, o in zip(rows, outputs)) / n
        out["chance_rate"] = sum(1 / len(r["choices"]) for r in rows) / n
    if task.kind == "generate":
        out["answered_rate"] = sum(o["answer"] is not None for o in outputs) / n
    return out


def load_for_eval(inputs: StageInputs, seed: int = 0):
    """(model, intervention or None) for any artifact that ends a pipeline: weights, then the
    ReFT head, then the LoRA adapter, then the intervention, as the lineage names them."""
    from peft import PeftModel
    model = inputs.load_weights(seed=inputs.parent.meta.get("config", {}).get("seed", seed))
    inputs.load_head(model)
    if (adapter := inputs.optional("adapter")):
        with models.LOADING:  # peft builds the adapter's layers: one model built at a time
            model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), inputs.intervention()


def prediction_row(task: Task, i: int, row: dict, output: dict) -> dict:
    if task.kind == "label":
        return {"index": i, "label": int(row["label"]), "pred": output["pred"],
                "score_false": output["score_false"], "score_true": output["score_true"]}
    if task.kind == "choice":
        return {"index": i, "label": row["label"], "pred": output["pred"], "pred_norm": output["pred_norm"],
                "scores": output["scores"]}
    return {"index": i, "generation": output["generation"], "answer": output["answer"], "gold": row["answer"],
            "correct": correct(task, row, output)}


def evaluate(cfg: EvalConfig, parent: Artifact, ctx: Context) -> Built:
    """Accuracy of the parent's model on the held-out split; every row's answer saved."""
    inputs = StageInputs.of(parent, ctx.store)
    tok = inputs.tokenizer()
    rows = inputs.rows("eval")
    model, intervention = load_for_eval(inputs)
    answerer = inputs.answerer(model, tok, intervention)
    outputs = answerer.answer(rows, cfg.batch_size, desc=f"evaluate {parent.stage}")
    task = inputs.task
    with open(ctx.out / "predictions.jsonl", "w") as f:
        for i, (row, output) in enumerate(zip(rows, outputs)):
            f.write(json.dumps(prediction_row(task, i, row, output)) + "\n")
    # which artifact was evaluated: heft.load serves exactly this model
    evaluated = artifact_ref(parent.stage, parent.key)
    return Built(summarize(task, rows, outputs), lineage={"evaluated": evaluated})
