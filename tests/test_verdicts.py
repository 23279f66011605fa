"""results.md's judging sentences follow the numbers: made-up cells where HEFT wins, loses or
ties against LoRA-only, and cells that do or do not clear the majority rate."""
from __future__ import annotations

import random
from dataclasses import dataclass

from heft.presets import read_preset
from study import tables, verdicts

PAPER = {"HEFT 3+3": 85.17, "LoRA-only 20": 85.05}
FACTS = read_preset("deployments/study/paper.yaml")  # the section headings results.md numbers
GPU = {"cells": "smollm2", "title": "SmolLM2-135M-Instruct on a GPU", "about": "bf16 weights"}


def render(name: str, setup: list[str], sections: dict) -> str:
    from study import document
    return document.render("HEFT", name, setup, sections, FACTS["sections"], FACTS["paper_model"])


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


def test_sections_without_a_grid_are_left_out_and_named():
    """A study without the ablation and other-task grids (deployments/study/minilm-core.yaml):
    no empty section 4 or 5 and no link to a stale plot; the setup says they are not in it."""
    base = {"recipes": [], "main_rows": [], "comparisons": [], "verdicts": [], "claims": [],
            "lora_targets": "q", "ablation_rows": [], "tasks": [], "spectra": [], "flips": [],
            "reproduce": []}
    text = render("core", ["- setup"], base)
    assert "## 4." not in text and "## 5." not in text and "ablation.png" not in text
    assert "## 6. Intruder dimensions" in text and "## 3. Accuracy vs. epochs" in text
    assert ("- Not in this study (its spec runs no grid for them): 0. A recipe that learns (chosen on the "
            "validation rows only); 4. Sensitivity: ReFT layer, low-rank dimension, positions, LoRA rank; "
            "5. Other task formats and tasks.") in text
    row = {"label": "ReFT rank 2", "mean": 62.0, "std": 0.0, "ci95_low": 60.0, "ci95_high": 64.0,
           "acc": [62.0], "valid": 65.0, "train_s": 10, "epochs": {"reft": 1}, "majority": 62.17, "n": 600}
    full = render("full", [], dict(base, ablation_rows=[row], tasks=[("Questions only", [row])]))
    assert "## 4. Sensitivity" in full and "## 5. Other task formats" in full and "### Questions only" in full
    assert "Held out: 600 rows, majority rate 62.17%." in full  # each task grid says what it is out of
    assert "0 of 1 cells learn beyond it" in full  # and whether its cells learn (60.0 < 62.17)
    learns = render("full", [], dict(base, tasks=[("Questions only", [dict(row, ci95_low=63.0)])]))
    assert "1 of 1 cells learn beyond it" in learns
    assert "no grid for them): 0. A recipe that learns (chosen on the validation rows only).\n" in full
    only_ablation = render("ablation", [], dict(base, ablation_rows=[row]))  # each on its own
    assert "## 4. Sensitivity" in only_ablation and "## 5." not in only_ablation
    assert "validation rows only); 5. Other task formats and tasks." in only_ablation


def test_the_recipe_sentence_says_whether_the_study_runs_the_chosen_recipe():
    """Section 0 names the recipe the other sections ran, read off their config: a study whose
    preset still runs another recipe must not claim it runs the chosen one."""
    from study import document
    # recipes as assemble.recipe_of gives them: the config's MLflow params (lists comma-joined)
    new = {"lora.target_modules": "query,key,value,dense", "lora.rank": 16, "lora.lr": 5e-4}
    old = {"lora.target_modules": "query,value", "lora.rank": 8, "lora.lr": 2e-3}
    row = {"mean": 65.0, "ci95_low": 63.0, "ci95_high": 67.0, "valid_curve": [68.0]}
    rows = [dict(row, label="all linear r16", recipe=new, chosen=True),
            dict(row, label="q,v r8", recipe=old, chosen=False, valid_curve=[65.0])]
    runs_new = document.recipe_use([dict(r, used=r["recipe"] == new) for r in rows], new)
    assert runs_new.startswith("The sections below run the chosen recipe, all linear r16")
    assert "lora.target_modules=query,key,value,dense" in runs_new
    runs_old = document.recipe_use([dict(r, used=r["recipe"] == old) for r in rows], old)
    assert "do **not** run the chosen recipe: they run the recipe q,v r8" in runs_old
    assert "lora.rank 8 where the chosen one has 16" in runs_old
    assert "lora.target_modules" in runs_old and "lora.lr 0.002 where the chosen one has 0.0005" in runs_old
    table = "\n".join(document.recipe_table([dict(r, used=r["recipe"] == old) for r in rows]))
    assert "| q,v r8 | 65.00 | 65.00 | 63.00-67.00 |  · run in the sections below |" in table


def test_the_seed_test_sentence_follows_the_number_of_seeds():
    from study import document
    assert document.seed_test([{"seeds": [0, 1, 2]}]) == \
        "paired t-test over the seeds, 2 degrees of freedom with 3 seeds"
    assert document.seed_test([{"seeds": [0]}, {"seeds": [0]}]).startswith("no paired t-test: 1 seed")
    one = {"question": "q", "a": "A", "b": "B", "mean_diff": 1.0, "std_diff": 0.0, "wins": 1, "n": 1,
           "p": float("nan"), "only_a_right": 3, "only_b_right": 1, "mcnemar_p": 0.6, "verdict": "tie"}
    assert "| 1/1 | - | 3 / 1 |" in document._cmp_table([one])[-1]


def test_the_study_runs_the_recipe_search_winner_and_tells_the_recipes_apart():
    """On the real specs: the comparison's config is the recipe of the 'all linear r16' cell (the
    preset is that cell), and no other recipe of the search reads as the same one (pooling, rank
    and modules are all part of a recipe; epochs and row counts are not)."""
    from study.assemble import recipe_of
    from heft.grids.spec import expand
    from study.spec import load_study
    grids = {g.name: expand(g, depth_of=lambda n: 6)
             for g in load_study("deployments/study/minilm.yaml").grid_specs()}
    used = recipe_of(grids["study-comparison"][0].config)
    recipes = {c.label: recipe_of(c.config) for c in grids["study-recipes"]}
    assert [label for label, r in recipes.items() if r == used] == ["all linear r16 lr 5e-4 head 1e-3"]
    assert used["lora.target_modules"] == "query,key,value,dense" and used["model.pooling"] == "mean"


def test_a_gpu_record_is_shown_in_section_5_with_its_source_and_a_verdict_from_its_numbers(tmp_path):
    """bench/gpu_check.py's record (docs/gpu/*.json) under section 5: where it came from, the
    table read from the record, and which cells learn following each cell's interval."""
    import json

    import pytest

    from heft.config import ConfigError
    from study import measured

    def cell(name, acc, low, high):
        return {"cell": name, "accuracy": acc, "ci95": [low, high], "majority": 0.6217, "n": 3270,
                "seconds": 46.4}
    record = {"device": "NVIDIA H200", "date": "2026-12-04",
              "command": "python3 bench/gpu_check.py --rows 2000",
              "train_rows": 2000, "smollm2": [cell("HEFT 3+3", 0.6798, 0.6636, 0.6956),
                                              cell("ReFT-only 6", 0.6131, 0.5963, 0.6297)],
              "not_run": ["LoRA-only 6"], "not_run_why": "past the 240 s deadline"}
    path = tmp_path / "h200.json"
    path.write_text(json.dumps(record))
    base = {"recipes": [], "main_rows": [], "comparisons": [], "verdicts": [], "claims": [],
            "lora_targets": "q", "ablation_rows": [], "tasks": [], "spectra": [], "flips": [],
            "reproduce": []}
    text = render("core", [], dict(base, measured=measured.load((dict(GPU, record=str(path)),))))
    assert "## 5. Other task formats and tasks" in text and "5. Other task formats and tasks." not in text
    assert "### SmolLM2-135M-Instruct on a GPU: NVIDIA H200, 2026-12-04" in text
    assert f"the record `{path}`, written by `python3 bench/gpu_check.py --rows 2000`" in text
    assert "| HEFT 3+3 | **67.98** | 66.36-69.56 | 46 |" in text
    assert "Held out: 3270 rows, majority rate 62.17%." in text
    assert ("1 of 2 cells learn beyond it (the lower end of the 95% interval above it); the best mean is "
            "HEFT 3+3 at 67.98% (66.36-69.56%). Cells that do not clear it: ReFT-only 6.") in text
    assert "Not run: LoRA-only 6 (past the 240 s deadline)." in text
    # the verdict follows the numbers: lower HEFT's interval below the majority rate
    record["smollm2"][0] = cell("HEFT 3+3", 0.63, 0.6151, 0.6482)
    path.write_text(json.dumps(record))
    text = render("core", [], dict(base, measured=measured.load((dict(GPU, record=str(path)),))))
    assert "0 of 2 cells learn beyond it" in text and "No cell clears the majority rate" in text
    del record["train_rows"]
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"lacks \['train_rows'\]"):
        measured.load((dict(GPU, record=str(path)),))
    # and a study naming that record fails when its spec is read, before any cell trains
    import yaml

    from study.spec import load_study
    spec = yaml.safe_load(open("deployments/study/minilm-core.yaml"))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(dict(spec, measured=[dict(GPU, record=str(path))])))
    with pytest.raises(ConfigError, match=r"lacks \['train_rows'\]"):
        load_study(str(tmp_path / "study.yaml"))
