"""Flow heft-study end to end on stories260K + the keyword task: results.md with every
section, valid PNGs, diagnostics that agree with the accuracies, MLflow nesting
study -> grid -> cell, and a rerun that trains nothing and reproduces the numbers."""
import re

import pytest
import yaml

from flows.study_flow import heft_study
from heft.grids.spec import load_grid
from study.spec import gather

# the long tier (make test-long, CI): the study's grids take about 2.5 minutes on 2 cores
pytestmark = pytest.mark.long
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(harness, stories, keyword_data, boolq_validation, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    (tmp / "ablation.yaml").write_text(yaml.safe_dump({
        "name": "study-ablation", "preset": "deployments/minilm-boolq.yaml",
        "overrides": ["mode=heft", "lora.epochs=3", "reft.epochs=3", "lora.schedule=constant",
                      "reft.schedule=constant"], "seeds": [0],
        "cells": [{"label": "default"}, {"label": "ReFT rank 2", "reft.rank": 2}]}))
    spec = tmp / "study.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny", "grids": ["deployments/study/comparison.yaml", str(tmp / "ablation.yaml")],
        "overrides": ["preset=deployments/stories-boolq.yaml", "epoch_scale=0.1", "seeds=[0, 1]",
                      "model.max_length=64", f"data.source={keyword_data}", "data.holdout_size=60",
                      "data.valid_size=40", "data.max_train=240", "lora.lr=3e-3", "reft.lr=1e-2",
                      f"artifact_root={tmp}/art", f"tracking_uri=sqlite:///{tmp}/mlflow.db"],
        "derived": [{"task": "passage-match", "source": str(boolq_validation), "out": str(tmp / "pm.jsonl")}],
        "results": str(tmp / "docs" / "results.md"), "facts": "deployments/study/paper.yaml"}))
    first = heft_study(study=str(spec))
    text = (tmp / "docs" / "results.md").read_text()
    second = heft_study(study=str(spec))
    return tmp, first, text, second


def test_results_document_has_every_section_and_cell(study):
    tmp, first, text, _ = study
    for heading in ("## 1. The paper's comparison", "## 2. Paired comparisons", "## 3. Accuracy vs. epochs",
                    "## 4. Sensitivity", "## 6. Intruder dimensions", "## 7. What the ReFT stage does",
                    "### Where the paper's ordering holds", "## Reproduce"):
        assert heading in text
    for label in ("HEFT 3+3", "HEFT 20+20", "LoRA-only 20", "ReFT-only 20", "ReFT->LoRA 3+3"):
        assert f"| {label} " in text
    assert "| 85.17 |" in text and "**HEFT 3+3 vs LoRA-only 20**" in text
    for png in ("curves", "comparison", "ablation", "intruders"):
        data = (tmp / "docs" / "results" / f"{png}.png").read_bytes()
        assert data[:8] == PNG and len(data) > 5000
        assert f"](results/{png}.png)" in text
    assert (tmp / "pm.jsonl").exists()  # the derived task was built first


def test_study_numbers_agree_with_the_cells(study):
    tmp, first, _, _ = study
    m = {k.replace("_", "+"): v for k, v in first["metrics"].items()}  # MLflow names: '+' -> '_'
    assert m["accuracy/LoRA-only 20"] > 80 and m["accuracy/HEFT 20+20"] > 80  # the keyword task is learnable
    assert all(0 <= v <= 100 for k, v in m.items() if k.startswith("accuracy/"))
    cells = {(c.cell.label, c.cell.seed): c for c in gather(load_grid(
        "deployments/study/comparison.yaml", yaml.safe_load((tmp / "study.yaml").read_text())["overrides"]))}
    assert len(cells) == 14
    mean = sum(100 * cells[("HEFT 3+3", s)].accuracy for s in (0, 1)) / 2
    assert m["accuracy/HEFT 3+3"] == pytest.approx(mean)
    # flips are a per-example decomposition of the accuracy change merged -> HEFT
    heft = cells[("HEFT 20+20", 0)]
    merged = heft.artifacts["eval:merged"].metrics["accuracy"]
    n = heft.artifacts["eval:heft"].metrics["n"]
    preds, labels = heft.predictions("heft")
    before, _ = heft.predictions("merged")
    fixed = sum(b != y and a == y for a, b, y in zip(preds, before, labels))
    broken = sum(b == y and a != y for a, b, y in zip(preds, before, labels))
    assert fixed - broken == round(n * (heft.accuracy - merged))
    # per-epoch validation curves: HEFT 20+20 = 2 LoRA epochs then 2 ReFT epochs
    assert len(heft.history("lora")) == 2 and len(heft.history("reft")) == 2


def test_intruder_table_covers_every_merged_lora(study):
    _, _, text, _ = study
    section = text.split("## 6. Intruder dimensions")[1].split("## 7.")[0]
    rows = [line.split(" | ") for line in section.splitlines() if re.match(r"\| [^|]+ \| \d+ \|", line)]
    # comparison: LoRA 1 and 2 epochs x 2 seeds; the ablation's LoRA (3 epochs at 0.1 = 1) is seed 0's
    assert len(rows) == 4
    weights = {int(r[4]) for r in rows}
    assert weights == {20}  # q, k, v, o in each of stories260K's 5 blocks
    by_epochs = {(int(r[1]), int(r[2])): float(r[7]) for r in rows}
    assert by_epochs[(0, 2)] > by_epochs[(0, 1)]  # a longer LoRA run moves the weights further


def test_mlflow_nests_study_grids_and_cells_with_diagnostics(study):
    from mlflow import MlflowClient
    tmp, first, _, _ = study
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.tags["heft.kind"] == "study" and "diff/HEFT 3_3 vs LoRA-only 20" in run.data.metrics
    files = {f.path for f in client.list_artifacts(run.info.run_id, "results")}
    assert {"results/results.md", "results/curves.png", "results/intruders.png"} <= files
    exp = run.info.experiment_id
    grids = client.search_runs([exp], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(g.data.tags["heft.grid"] for g in grids) == ["study-ablation", "study-comparison"]
    comparison = next(g for g in grids if g.data.tags["heft.grid"] == "study-comparison")
    cells = client.search_runs([exp], f"tags.mlflow.parentRunId = '{comparison.info.run_id}'")
    assert len(cells) == 14
    heft_cells = [c for c in cells if c.data.tags["heft.method"] == "heft"]
    assert len(heft_cells) == 4 and all("reft_fix_rate" in c.data.metrics for c in heft_cells)
    assert all("lora_intruders_0.5" in c.data.metrics for c in cells
               if c.data.tags["heft.method"] == "lora-only")


def test_rerun_trains_nothing_and_reproduces_the_tables(study):
    tmp, first, text, second = study
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_run(second["mlflow_run_id"]).info.experiment_id

    def grids(run):
        return {g.data.tags["heft.grid"]: g.data.metrics for g in
                client.search_runs([exp], f"tags.mlflow.parentRunId = '{run['mlflow_run_id']}'")}
    before, after = grids(first), grids(second)
    assert {g: m["steps_built"] for g, m in after.items()} == {"study-ablation": 0, "study-comparison": 0}
    for g, m in after.items():  # every stage task of the first run answered from the cache
        assert m["steps_reused"] == before[g]["steps_built"] + before[g]["steps_reused"] > 0
    again = (tmp / "docs" / "results.md").read_text()

    def table(t):
        return [line for line in t.splitlines() if line.startswith("| ")]
    assert table(again) == table(text)
