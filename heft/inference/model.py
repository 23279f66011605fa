"""A trained HEFT model as one object: weights, head, intervention, task, prompt format, answer tokens.

``HeftModel.predict(rows)`` answers rows with the evaluation stage's own code
(heft/modeling/answering.py): the same prompts and tokenisation, the same batches and the same
scoring or decoding with the intervention at its layer and on the prompt's positions.  So its
answers on the held-out rows are the evaluation stage's.  What a row holds and what comes back
follows the task:
* BoolQ (label): ``{question, passage}`` -> ``{label, probability, score_false, score_true}``;
* a templated task: the template's fields; a choice task also ``choices`` (a list of at least
  two) -> ``{choice, answer, choice_norm, scores}``; a generate task ->
  ``{generation, answer}`` (the answer the task's rule reads from the generation).
Rows are checked before any model work; a bad row is an error naming the row and the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from heft.data.sources import BOOLQ, DataError
from heft.data.task import Task, render, template_fields


def check_rows(rows: Iterable[dict], fmt: str, task: Task = BOOLQ) -> list[dict]:
    """Rows as the task's encoder takes them; a bad row raises DataError naming it."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"row {i}: expected a mapping of the task's fields, got {row!r}")
        out.append(_boolq_row(row, i, fmt) if task.kind == "label" and not task.template
                   else _task_row(row, i, task))
    if not out:
        raise DataError("no rows to predict")
    return out


def _boolq_row(row: dict, i: int, fmt: str) -> dict:
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"row {i}: 'question' must be a non-empty string, got {question!r}")
    passage = row.get("passage")
    if fmt == "passage" and (not isinstance(passage, str) or not passage.strip()):
        raise DataError(f"row {i}: this model reads a passage with the question "
                        f"(format 'passage'), got passage={passage!r}")
    return {"question": question.strip(), "passage": passage, "label": False}


def _task_row(row: dict, i: int, task: Task) -> dict:
    missing = [f for f in template_fields(task.template) if f not in row]
    if missing:
        raise DataError(f"row {i}: no field {missing[0]!r} (this model's prompt is {task.template!r})")
    out = {"prompt": render(task.template, row)}
    if task.kind == "choice":
        choices = row.get(task.choices)
        if not isinstance(choices, list) or len(choices) < 2 or \
                not all(isinstance(c, str) and c.strip() for c in choices):
            raise DataError(f"row {i}: field {task.choices!r} must be a list of at least two non-empty "
                            f"strings, got {choices!r}")
        out["choices"] = [c.strip() for c in choices]
    return out


@dataclass
class HeftModel:
    model: Any                   # a transformers model (merged weights, or base + LoRA adapter)
    tokenizer: Any
    family: str                  # causal-lm | seq-cls
    pooling: str                 # seq-cls: cls | mean
    format: str                  # passage | question: what a BoolQ row must hold
    max_length: int
    intervention: Any = None     # heft.modeling.loreft.Intervention, or None
    answer_ids: tuple | None = None  # causal LM: first tokens of ' false' and ' true'
    precision: str = "off"       # 'bfloat16': CPU bf16 autocast
    card: dict = field(default_factory=dict)  # keys, configs, held-out metrics (heft.json)
    task: Task = BOOLQ

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def check_rows(self, rows: Iterable[dict]) -> list[dict]:
        return check_rows(rows, self.format, self.task)

    def predict(self, rows: Iterable[dict], batch_size: int = 64, desc: str = "predict") -> list[dict]:
        """One answer per row, in the order of ``rows`` (the module docstring says which fields)."""
        from heft.modeling.answering import Answerer
        checked = self.check_rows(rows)
        answerer = Answerer(self.model, self.tokenizer, self.task, self.family, self.pooling, self.format,
                            self.max_length, self.answer_ids, self.intervention, self.precision)
        outputs = answerer.answer(checked, batch_size, desc=desc)
        if self.task.kind == "label":
            import torch
            scores = torch.tensor([[o["score_false"], o["score_true"]] for o in outputs], dtype=torch.float64)
            probs = torch.softmax(scores, dim=1)[:, 1]
            return [{"label": bool(o["pred"]), "probability": float(p), "score_false": o["score_false"],
                     "score_true": o["score_true"]} for o, p in zip(outputs, probs)]
        if self.task.kind == "choice":
            return [{"choice": o["pred"], "answer": row["choices"][o["pred"]], "choice_norm": o["pred_norm"],
                     "scores": o["scores"]} for row, o in zip(checked, outputs)]
        return [{"generation": o["generation"], "answer": o["answer"]} for o in outputs]

    def ask(self, question: str, passage: str | None = None, **fields) -> dict:
        """One answer: ``model.ask("is the sky blue", passage)``, or the task's own fields."""
        return self.predict([{"question": question, "passage": passage, **fields}], batch_size=1)[0]
