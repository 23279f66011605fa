"""Grid report: one table row per cell (mean ± std over seeds, interval, validation accuracy),
the best cell by validation accuracy marked, plus PNG plots (heft/grids/plots.py).

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

    @classmethod
    def of(cls, cell: Cell, run: RunResult) -> "CellResult":
        m = run.metrics
        stages = [s for s in run.stages if s.stage != "base"]  # base is virtual: never work
        return cls(cell.label, cell.seed, cell.method, cell.epochs.get("lora", 0), cell.epochs.get("reft", 0),
                   cell.total_epochs, cell.settings, m["accuracy"], m["ci95_low"], m["ci95_high"],
                   m["majority_rate"], m["n"], run.validation_accuracy,
                   sum(s.cache == "ran" for s in stages), sum(s.cache == "reused" for s in stages),
                   run.seconds, run.mlflow_run_id)


def aggregate(results: list[CellResult]) -> list[dict]:
    """One row per label (cells differing only by seed), in grid order: held-out mean, seed
    std, the pooled 95% Wilson interval, and the mean validation accuracy (model choice)."""
    rows: dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(r.label, {
            "label": r.label, "method": r.method, "lora_epochs": r.lora_epochs, "reft_epochs": r.reft_epochs,
            "total_epochs": r.total_epochs, "settings": r.settings,
            "seeds": [], "accuracies": [], "valid": [],
            "majority_rate": r.majority_rate, "correct": 0, "n": 0, "ran": 0, "cached": 0, "seconds": 0.0})
        row["seeds"].append(r.seed)
        row["accuracies"].append(r.accuracy)
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
    return list(rows.values())


def champion(valid: list[float | None]) -> int | None:
    """Index of the best validation accuracy (ties: the first), None when nothing has one.
    The grid report's best row and the registered champion (flows/grid_flow.py) are both
    chosen here, and only from validation accuracies: choosing on the held-out rows would
    make the held-out number reported for the choice optimistic."""
    scored = [i for i, v in enumerate(valid) if v is not None]
    return max(scored, key=lambda i: (valid[i], -i)) if scored else None


def best_row(rows: list[dict]) -> dict | None:
    """The row with the best mean validation accuracy (never chosen by held-out accuracy)."""
    best = champion([r["valid_mean"] for r in rows])
    return None if best is None else rows[best]


def markdown(spec: GridSpec, rows: list[dict]) -> str:
    seeds = sorted({s for r in rows for s in r["seeds"]})
    best = best_row(rows)
    majority = rows[0]["majority_rate"]
    lines = [f"## Grid `{spec.name}`", ""]
    if best:
        lines += [f"**Best cell by validation accuracy: {best['label']}**: "
                  f"validation {best['valid_mean']:.2%}, "
                  f"held-out {best['mean']:.2%} (95% CI {best['ci95_low']:.2%}-{best['ci95_high']:.2%}), "
                  f"{100 * (best['mean'] - majority):+.2f} points against the held-out majority rate "
                  f"{majority:.2%}.", ""]
    lines += [f"Held-out accuracy, mean ± std over seeds {seeds} (std: sample, n-1), 95% Wilson interval "
              f"pooled over the seeds' predictions. Validation accuracy chooses the best cell (marked ★); "
              f"the held-out rows never do."
              + (f" Epochs scaled by {spec.epoch_scale}." if spec.epoch_scale != 1 else ""), "",
              "| cell | method | LoRA ep | ReFT ep | validation | held-out | 95% CI | per seed "
              "| steps ran / reused | s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f" ± {r['std']:.2%}" if len(r["accuracies"]) > 1 else ""
        per_seed = ", ".join(f"{a:.2%}" for a in r["accuracies"])
        valid = f"{r['valid_mean']:.2%}" if r["valid_mean"] is not None else "-"
        valid += " ★" if r is best else ""
        lines.append(f"| {r['label']} | {MODES[r['method']].title} "
                     f"| {r['lora_epochs']} | {r['reft_epochs']} "
                     f"| {valid} | {r['mean']:.2%}{spread} | {r['ci95_low']:.2%}-{r['ci95_high']:.2%} "
                     f"| {per_seed} | {r['ran']} / {r['cached']} | {r['seconds']:.0f} |")
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
    metrics = {} if best is None else {"best_valid_accuracy": best["valid_mean"],
                                       "best_heldout_accuracy": best["mean"],
                                       "best_heldout_minus_majority": best["mean"] - majority}
    return {"markdown": text, "rows": rows, "files": files,
            "best": {"label": best["label"] if best else "", "metrics": metrics}}
