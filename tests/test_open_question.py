"""The open-question section's sentence follows its numbers: made-up cells of a choice task where
HEFT's advantage carries over, where it does not, and where HEFT learned nothing; and a study
of one section rewrites only that section of the document."""
from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass, field

from heft.presets import read_preset
from study import open_question

FACTS = read_preset("deployments/study/open-question.yaml")["open_question"]
N = 500


@dataclass
class FakeCell:
    label: str
    seed: int
    method: str
    epochs: dict = field(default_factory=dict)


class FakeArtifact:
    def lineage(self, name):
        return {"name": "arc-easy", "kind": "choice"}


class Fake:
    """What the section reads of a finished cell, a share ``right`` of its answers right."""

    def __init__(self, label: str, right: float, labels: list[int], seed: int = 0):
        # exactly round(right * n) rows right, which ones drawn from a seed of the label (str
        # hash() differs per process: accuracies drawn from it made a test flaky)
        rng = random.Random(zlib.crc32(label.encode()))
        hits = set(rng.sample(range(len(labels)), round(right * len(labels))))
        self.labels = labels
        self.preds = [y if i in hits else (y + 1) % 4 for i, y in enumerate(labels)]
        self.cell = FakeCell(label, seed, "heft")
        self.accuracy = sum(p == y for p, y in zip(self.preds, labels)) / len(labels)
        self.final_metrics = {"accuracy": self.accuracy, "n": len(labels), "majority_rate": 0.27,
                              "chance_rate": 0.25, "accuracy_norm": self.accuracy}
        self.valid_accuracy = None
        self.artifacts = {"data": FakeArtifact()}

    def predictions(self, evaluation=None):
        return self.preds, self.labels

    def history(self, stage):
        return []


def grid(**right) -> list[Fake]:
    rng = random.Random(0)
    labels = [rng.randrange(4) for _ in range(N)]
    names = {"untrained": "untrained", "heft": "HEFT 3+3", "lora6": "LoRA-only 6", "reft6": "ReFT-only 6",
             "lora20": "LoRA-only 20", "reft20": "ReFT-only 20"}
    return [Fake(names[k], v, labels) for k, v in right.items()]


def verdict(cells) -> str:
    text = "\n".join(open_question.section({FACTS["grids"][0]: cells}, FACTS))
    return next(line for line in text.splitlines() if line.startswith("- **"))


def test_heft_matching_long_lora_and_beating_long_reft_carries_over():
    line = verdict(grid(untrained=0.30, heft=0.60, lora6=0.58, reft6=0.45, lora20=0.61, reft20=0.45))
    assert "HEFT 3+3 matches LoRA-only 20: holds" in line and "HEFT 3+3 beats ReFT-only 20: holds" in line
    assert line.endswith("HEFT's advantage carries over at this scale.")


def test_heft_losing_to_long_lora_and_tying_long_reft_does_not_carry_over():
    line = verdict(grid(untrained=0.30, heft=0.45, lora6=0.50, reft6=0.45, lora20=0.65, reft20=0.45))
    assert "matches LoRA-only 20: does not hold" in line and "beats ReFT-only 20: does not hold" in line
    assert line.endswith("does not carry over at this scale.")


def test_a_heft_cell_that_does_not_clear_the_untrained_model_says_so():
    line = verdict(grid(untrained=0.40, heft=0.41, lora6=0.50, reft6=0.45, lora20=0.65, reft20=0.45))
    assert "not clear of the untrained model's" in line and "cannot say" in line


def test_without_the_long_cells_the_claims_are_called_untested():
    cells = [c for c in grid(untrained=0.30, heft=0.60, lora6=0.58, reft6=0.45, lora20=0.61, reft20=0.45)
             if not c.cell.label.endswith(" 20")]
    line = verdict(cells)
    assert "did not run, so the paper's claims are not tested" in line and "carr" not in line
    assert re.search(r"vs LoRA-only 6 [+-]\d+\.\d\d points \(McNemar p = ", line)
    assert re.search(r"vs ReFT-only 6 [+-]\d+\.\d\d points", line)


def test_a_study_of_one_section_rewrites_only_that_section(tmp_path):
    from study.assemble import write_section
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\n## 1. The comparison\n\nnumbers\n\n## Reproduce\n\n- make results\n")
    write_section(doc, "open-question", "## 8. Open question\n\nfirst run\n", ["- make tasks"])
    first = doc.read_text()
    assert first.index("## 8. Open question") < first.index("## Reproduce") and "numbers" in first
    write_section(doc, "open-question", "## 8. Open question\n\nsecond run\n", ["- make tasks"])
    second = doc.read_text()
    assert "second run" in second and "first run" not in second and second.count("## 8.") == 1
    assert second.replace("second run", "first run") == first
