"""A model's answers to a task's rows, and how they are judged: one code path for evaluation,
validation during training and ``heft.load(...).predict``.

* label: the (false, true) scores at the cue (heft/modeling/scoring.py ``predict``);
* choice: every choice's summed log-probability after the prompt (``score_choices``); the
  answer is the best sum (``acc``), and the best sum per character of ' ' + choice
  (lm-evaluation-harness's ``acc_norm``, which does not favour short choices) is kept beside it;
* generate: greedy decoding with the KV cache (heft/modeling/generation.py), the answer read
  from the generation by the task's rule (heft/data/answers.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heft.data import answers
from heft.data.batching import encode, encode_prompts, encode_sequences
from heft.data.task import Task
from heft.modeling.generation import generate
from heft.modeling.scoring import predict, score_choices


@dataclass
class Answerer:
    """A model with what it needs to answer a task's rows."""
    model: Any
    tokenizer: Any
    task: Task
    family: str
    pooling: str = "cls"
    fmt: str = "passage"
    max_length: int = 256
    answer_ids: tuple | None = None
    intervention: Any = None
    precision: str = "off"

    def answer(self, rows: list[dict], batch_size: int = 64, desc: str = "answer") -> list[dict]:
        """One output per row (rows as the data stage stores them: BoolQ's fields or 'prompt')."""
        tok, kind = self.tokenizer, self.task.kind
        if kind == "label":
            enc = encode(rows, tok, self.fmt, self.family, self.max_length)
            preds, scores = predict(self.model, enc, batch_size, family=self.family, pooling=self.pooling,
                                    answer_ids=self.answer_ids, pad_id=tok.pad_token_id,
                                    intervention=self.intervention, desc=desc, return_scores=True,
                                    precision=self.precision)
            return [{"pred": int(preds[i]), "score_false": float(scores[i, 0]),
                     "score_true": float(scores[i, 1])} for i in range(len(rows))]
        if kind == "choice":
            enc = encode_sequences(rows, tok, self.task, self.max_length, all_choices=True)
            sums = score_choices(self.model, enc, len(rows), batch_size, pad_id=tok.pad_token_id,
                                 intervention=self.intervention, desc=desc, precision=self.precision)
            out = []
            for row, s in zip(rows, sums):
                norm = [v / len(" " + c) for v, c in zip(s, row["choices"])]
                out.append({"pred": max(range(len(s)), key=s.__getitem__),
                            "pred_norm": max(range(len(norm)), key=norm.__getitem__), "scores": s})
            return out
        enc = encode_prompts(rows, tok, self.max_length)
        texts = generate(self.model, tok, enc, max_new_tokens=self.task.max_new_tokens, stop=self.task.stop,
                         batch_size=min(batch_size, 16), intervention=self.intervention,
                         precision=self.precision, desc=desc)
        return [{"generation": t, "answer": answers.extract(t, self.task.answer)} for t in texts]


def correct(task: Task, row: dict, output: dict) -> bool:
    """Whether one output answers its row (the stored row holds the gold answer)."""
    if task.kind == "generate":
        return answers.same(output["answer"], row["answer"], task.answer, task.tolerance)
    return output["pred"] == int(row["label"])


def accuracy(task: Task, rows: list[dict], outputs: list[dict]) -> float:
    return sum(correct(task, r, o) for r, o in zip(rows, outputs)) / max(1, len(rows))
