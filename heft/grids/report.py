"""Grid report: one table row per cell (mean ± std over seeds, interval, validation accuracy),
the verdict first (heft/grids/verdict.py: the best cell by validation accuracy, its margin or
tie, constant predictors), plus PNG plots (heft/grids/plots.py).

Written to a local folder (report.md, results.csv, grid.yaml, *.png) that the flow logs
to the grid's MLflow parent run and summarises as a Prefect markdown artifact.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from heft.stats import wilson_interval
from heft.grids.spec import Cell, GridSpec, spec_dict
from heft.modes import MODES
from heft.run.result import RunResult
from heft.grids.plots import ablation_axes, plot_ablation, plot_epochs
from heft.grids.verdict import Verdict, champion, constant_answer

__all__ = ["CellResult", "Verdict", "aggregate", "best_row", "champion", "markdown", "write_report"]


@dataclass(frozen=True)
class CellResult:
    """What one finished cell contributes to the report."""
    label: str
    seed: int
    method: str
    lora_epochs: int
    reft_epochs: int
    total_epochs: int
    settings: dict
    accuracy: float
    ci95_low: float
    ci95_high: float
    majority_rate: float
    n: int
    valid_accuracy: float | None  # the final training stage's validation accuracy (model choice)
    ran: int          # stage tasks that did work in this cell
    cached: int       # stage tasks answered from the cache
    seconds: float
    run_id: str
    title: str = ""                # the label as shown: 'HEFT 20+20 (x0.1 = 2+2)'
    valid_rows: int = 0            # rows the validation accuracy is measured on
    predicted_true_rate: float | None = None  # share of held-out rows answered 'true'

    @classmethod
    def of(cls, cell: Cell, run: RunResult) -> "CellResult":
        m = run.metrics
        stages = [s for s in run.stages if s.stage != "base"]  # base is virtual: never work
        return cls(cell.label, cell.seed, cell.method, cell.epochs.get("lora", 0), cell.epochs.get("reft", 0),
                   cell.total_epochs, cell.settings, m["accuracy"], m["ci95_low"], m["ci95_high"],
                   m["majority_rate"], m["n"], run.validation_accuracy,
                   sum(s.cache == "ran" for s in stages), sum(s.cache == "reused" for s in stages),
                   run.seconds, run.mlflow_run_id, cell.title, run.validation_rows,
                   m.get("predicted_true_rate"))

    @property
    def constant(self) -> str | None:
        """'true' or 'false' when the model gave that answer on every held-out row."""
        return constant_answer(self.predicted_true_rate)


def aggregate(results: list[CellResult]) -> list[dict]:
    """One row per label (cells differing only by seed), in grid order: held-out mean, seed
    std, the pooled 95% Wilson interval, the mean validation accuracy (model choice), and
    ``constant``: the answer every seed gave on every held-out row, if they all did."""
    rows: dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(r.label, {
            "label": r.label, "title": r.title or r.label, "method": r.method, "lora_epochs": r.lora_epochs,
            "reft_epochs": r.reft_epochs, "total_epochs": r.total_epochs, "settings": r.settings,
            "seeds": [], "accuracies": [], "valid": [], "answers": [], "valid_rows": r.valid_rows,
            "majority_rate": r.majority_rate, "correct": 0, "n": 0, "ran": 0, "cached": 0, "seconds": 0.0})
        row["seeds"].append(r.seed)
        row["accuracies"].append(r.accuracy)
        row["answers"].append(r.constant)
        if r.valid_accuracy is not None:
            row["valid"].append(r.valid_accuracy)
        row["correct"] += round(r.accuracy * r.n)
        row["n"] += r.n
        for k in ("ran", "cached", "seconds"):
            row[k] += getattr(r, k)
    for row in rows.values():
        acc = row["accuracies"]
        row["mean"] = statistics.fmean(acc)
        row["std"] = statistics.stdev(acc) if len(acc) > 1 else 0.0
        row["ci95_low"], row["ci95_high"] = wilson_interval(row["correct"], row["n"])  # pooled over seeds
        row["valid_mean"] = statistics.fmean(row["valid"]) if row["valid"] else None
        answers = set(row.pop("answers"))
        row["constant"] = (answers.pop() if len(answers) == 1 else "true or false, by seed") \
            if None not in answers else None
    return list(rows.values())


def best_row(rows: list[dict]) -> dict | None:
    """The row with the best mean validation accuracy (never chosen by held-out accuracy; ties:
    the first in grid order, and the verdict says it is a tie)."""
    return Verdict.of(rows).best


def markdown(spec: GridSpec, rows: list[dict]) -> str:
    seeds = sorted({s for r in rows for s in r["seeds"]})
    best = best_row(rows)
    verdict = Verdict.of(rows)
    majority = rows[0]["majority_rate"]
    lines = [f"## Grid `{spec.name}`", ""]
    if best:
        lines += [f"**Best cell by validation accuracy: {best['title']}**: "
                  f"validation {best['valid_mean']:.2%}, "
                  f"held-out {best['mean']:.2%} (95% CI {best['ci95_low']:.2%}-{best['ci95_high']:.2%}), "
                  f"{100 * (best['mean'] - majority):+.2f} points against the held-out majority rate "
                  f"{majority:.2%}.", ""]
    for line in verdict.lines():  # each its own paragraph
        lines += [line, ""]
    lines += [f"Held-out accuracy, mean ± std over seeds {seeds} (std: sample, n-1), 95% Wilson interval "
              f"pooled over the seeds' predictions. Validation accuracy chooses the best cell (marked ★); "
              f"the held-out rows never do."
              + (f" Epochs scaled by {spec.epoch_scale}." if spec.epoch_scale != 1 else ""), "",
              "| cell | method | LoRA ep | ReFT ep | validation | held-out | 95% CI | per seed "
              "| answers | steps ran / reused | s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f" ± {r['std']:.2%}" if len(r["accuracies"]) > 1 else ""
        per_seed = ", ".join(f"{a:.2%}" for a in r["accuracies"])
        valid = f"{r['valid_mean']:.2%}" if r["valid_mean"] is not None else "-"
        valid += (" ★ (tie)" if verdict.is_tie else " ★") if r is best else ""
        answers = f"always {r['constant']} ⚠" if r["constant"] else "varied"
        lines.append(f"| {r['title']} | {MODES[r['method']].title} "
                     f"| {r['lora_epochs']} | {r['reft_epochs']} "
                     f"| {valid} | {r['mean']:.2%}{spread} | {r['ci95_low']:.2%}-{r['ci95_high']:.2%} "
                     f"| {per_seed} | {answers} | {r['ran']} / {r['cached']} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def write_report(folder: Path, spec: GridSpec, cells: list[Cell], results: list[CellResult]) -> dict:
    """report.md, results.csv, grid.yaml and the PNGs in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = aggregate(results)
    files = {"report": folder / "report.md", "results": folder / "results.csv", "grid": folder / "grid.yaml"}
    text = markdown(spec, rows)
    files["report"].write_text(text)
    with open(files["results"], "w", newline="") as f:
        fields = [k for k in CellResult.__dataclass_fields__ if k != "settings"] + ["settings"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in results:
            w.writerow(asdict(r) | {"settings": yaml.safe_dump(r.settings, default_flow_style=True).strip()})
    files["grid"].write_text(yaml.safe_dump(spec_dict(spec, cells), sort_keys=False))
    best = best_row(rows)
    if plot_epochs(rows, folder / "accuracy_vs_epochs.png", best):  # only where the epochs vary
        files["epochs_plot"] = folder / "accuracy_vs_epochs.png"
    if plot_ablation(rows, ablation_axes(spec), folder / "ablation.png", best):
        files["ablation_plot"] = folder / "ablation.png"
    majority = rows[0]["majority_rate"]
    verdict = Verdict.of(rows)
    metrics = {} if best is None else {"best_valid_accuracy": best["valid_mean"],
                                       "best_heldout_accuracy": best["mean"],
                                       "best_heldout_minus_majority": best["mean"] - majority}
    if verdict.margin is not None:
        metrics["best_valid_margin"] = verdict.margin
    return {"markdown": text, "rows": rows, "files": files, "verdict": verdict,
            "best": {"label": best["label"] if best else "", "title": best["title"] if best else "",
                     "metrics": metrics, "pick": verdict.pick(), "tie": verdict.is_tie,
                     "constant": [r["title"] for r in verdict.constant]}}
