"""A trained HEFT model as one object: weights, head, intervention, prompt format, answer tokens.

``HeftModel.predict(rows)`` answers ``{question, passage}`` rows with the evaluation stage's
own code: the same prompt formats and tokenisation (heft/data), the same length-grouped,
right-padded batches and the same scoring with the intervention attached at its layer and
positions (heft/modeling/scoring.py).  So its scores on the held-out rows are the evaluation
stage's scores.  Rows are checked before any model work: a row without a question, or a
passage-format model asked without a passage, is an error naming the row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from heft.data.sources import DataError


def check_rows(rows: Iterable[dict], fmt: str) -> list[dict]:
    """Rows as the encoder takes them; a bad row raises DataError naming it."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"row {i}: expected a mapping with 'question' (and 'passage'), got {row!r}")
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"row {i}: 'question' must be a non-empty string, got {question!r}")
        passage = row.get("passage")
        if fmt == "passage" and (not isinstance(passage, str) or not passage.strip()):
            raise DataError(f"row {i}: this model reads a passage with the question "
                            f"(format 'passage'), got passage={passage!r}")
        out.append({"question": question.strip(), "passage": passage, "label": False})
    if not out:
        raise DataError("no rows to predict")
    return out


@dataclass
class HeftModel:
    model: Any                   # a transformers model (merged weights, or base + LoRA adapter)
    tokenizer: Any
    family: str                  # causal-lm | seq-cls
    pooling: str                 # seq-cls: cls | mean
    format: str                  # passage | question: what a row must hold
    max_length: int
    intervention: Any = None     # heft.modeling.loreft.Intervention, or None
    answer_ids: tuple | None = None  # causal LM: first tokens of ' false' and ' true'
    precision: str = "off"       # 'bfloat16': CPU bf16 autocast
    card: dict = field(default_factory=dict)  # keys, configs, held-out metrics (heft.json)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def check_rows(self, rows: Iterable[dict]) -> list[dict]:
        return check_rows(rows, self.format)

    def predict(self, rows: Iterable[dict], batch_size: int = 64, desc: str = "predict") -> list[dict]:
        """[{label, probability, score_false, score_true}] in the order of ``rows``;
        probability = P(true) from the two scores (softmax)."""
        import torch

        from heft.data.batching import encode
        from heft.modeling.scoring import predict
        checked = self.check_rows(rows)
        enc = encode(checked, self.tokenizer, self.format, self.family, self.max_length)
        preds, scores = predict(self.model, enc, batch_size, family=self.family, pooling=self.pooling,
                                answer_ids=self.answer_ids, pad_id=self.tokenizer.pad_token_id,
                                intervention=self.intervention, desc=desc, return_scores=True,
                                precision=self.precision)
        probs = torch.softmax(scores.double(), dim=1)[:, 1]
        return [{"label": bool(preds[i]), "probability": float(probs[i]),
                 "score_false": float(scores[i, 0]), "score_true": float(scores[i, 1])}
                for i in range(len(checked))]

    def ask(self, question: str, passage: str | None = None) -> dict:
        """One answer: ``model.ask("is the sky blue", passage)``."""
        return self.predict([{"question": question, "passage": passage}], batch_size=1)[0]
