"""results.md's judging sentences follow the numbers: made-up cells where HEFT wins, loses or
ties against LoRA-only, and cells that do or do not clear the majority rate."""
from __future__ import annotations

import random
from dataclasses import dataclass

from heft.study import tables, verdicts

PAPER = {"HEFT 3+3": 85.17, "LoRA-only 20": 85.05}


@dataclass
class FakeCell:  # what tables.compare reads of a finished cell
    label: str
    seed: int
    method: str


class Fake:
    def __init__(self, label, seed, right: float, n=600):
        rng = random.Random(seed)
        self.labels = [rng.random() < 0.6 for _ in range(n)]
        self.preds = [y if rng.random() < right else not y for y in self.labels]
        self.cell = FakeCell(label, seed, "heft")
        self.accuracy = sum(p == y for p, y in zip(self.preds, self.labels)) / n

    def predictions(self, evaluation=None):
        return [int(p) for p in self.preds], [int(y) for y in self.labels]


def comparison(heft_right: float, lora_right: float) -> dict:
    a = [Fake("HEFT 3+3", s, heft_right) for s in range(3)]
    b = [Fake("LoRA-only 20", s, lora_right) for s in range(3)]
    for x, y in zip(a, b):  # the same held-out rows for both cells
        y.labels = x.labels
        rng = random.Random(100 + x.cell.seed)
        y.preds = list(x.preds) if lora_right == heft_right else \
            [t if rng.random() < lora_right else not t for t in x.labels]  # a tie: the same answers
        y.accuracy = sum(p == t for p, t in zip(y.preds, y.labels)) / len(y.labels)
    return tables.comparisons(a + b, (("HEFT 3+3", "LoRA-only 20", "short HEFT matches long LoRA"),))[0]


def test_the_claim_holds_when_heft_wins_and_not_when_it_loses():
    win, lose, tie = comparison(0.80, 0.60), comparison(0.60, 0.80), comparison(0.70, 0.70)
    assert verdicts.status(win, PAPER) == "holds"
    assert "HEFT 3+3 higher" in verdicts.comparison_line(win, PAPER)
    assert verdicts.status(lose, PAPER) == "does not hold"
    assert "LoRA-only 20 higher" in verdicts.comparison_line(lose, PAPER)
    assert verdicts.status(tie, PAPER) == "tie"
    assert "a tie at this scale" in verdicts.comparison_line(tie, PAPER)
    assert verdicts.summary([win, lose], PAPER) == [
        "- **Hold:** HEFT 3+3 vs LoRA-only 20.", "- **Do not hold:** HEFT 3+3 vs LoRA-only 20.",
        "- **Ties at this scale:** none."]


def test_the_learning_sentence_follows_the_intervals():
    rows = [{"label": "HEFT 3+3", "mean": 66.0, "ci95_low": 64.4, "ci95_high": 67.6, "majority": 62.17},
            {"label": "ReFT-only 20", "mean": 62.2, "ci95_low": 60.5, "ci95_high": 63.8, "majority": 62.17}]
    line = verdicts.learning_line(rows)
    assert "1 of 2 cells learn beyond it" in line and "do not clear it: ReFT-only 20" in line
    nobody = verdicts.learning_line([dict(r, ci95_low=60.0) for r in rows])
    assert "0 of 2 cells" in nobody and "not how much it learns" in nobody
    assert "overfits 600" not in line + nobody  # no sentence written for one study
