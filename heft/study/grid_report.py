"""Grid report: one table row per cell (mean ± std over seeds) plus PNG plots.

Written to a local folder (report.md, results.csv, grid.yaml, *.png) that the flow logs
to the grid's MLflow parent run and summarises as a Prefect markdown artifact.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from heft.study.grid import LAYER_FRACTION, METHOD_NAMES, Cell, GridSpec, spec_dict


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
    def of(cls, cell: Cell, run: dict, seconds: float) -> "CellResult":
        m = run["results"][cell.final_eval]
        stages = [s for s in run["stages"] if s["stage"] != "base"]  # base is virtual: never work
        return cls(cell.label, cell.seed, cell.method, cell.epochs.get("lora", 0), cell.epochs.get("reft", 0),
                   cell.total_epochs, cell.settings, m["accuracy"], m["ci95_low"], m["ci95_high"],
                   m["majority_rate"], m["n"], run.get("validation_accuracy"),
                   sum(s["cache"] == "ran" for s in stages),
                   sum(s["cache"] == "reused" for s in stages), seconds, run["mlflow_run_id"])


def aggregate(results: list[CellResult]) -> list[dict]:
    """One row per label (cells differing only by seed), in grid order."""
    rows: dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(r.label, {
            "label": r.label, "method": r.method, "lora_epochs": r.lora_epochs, "reft_epochs": r.reft_epochs,
            "total_epochs": r.total_epochs, "settings": r.settings, "seeds": [], "accuracies": [],
            "majority_rate": r.majority_rate, "ran": 0, "cached": 0, "seconds": 0.0})
        row["seeds"].append(r.seed)
        row["accuracies"].append(r.accuracy)
        for k in ("ran", "cached", "seconds"):
            row[k] += getattr(r, k)
    for row in rows.values():
        acc = row["accuracies"]
        row["mean"] = statistics.fmean(acc)
        row["std"] = statistics.stdev(acc) if len(acc) > 1 else 0.0
    return list(rows.values())


def markdown(spec: GridSpec, rows: list[dict]) -> str:
    seeds = sorted({s for r in rows for s in r["seeds"]})
    lines = [f"## Grid `{spec.name}`", "",
             f"Held-out accuracy, mean ± std over seeds {seeds} (std: sample, n-1). "
             f"Held-out majority rate: {rows[0]['majority_rate']:.2%}."
             + (f" Epochs scaled by {spec.epoch_scale}." if spec.epoch_scale != 1 else ""), "",
             "| cell | method | LoRA ep | ReFT ep | total ep | accuracy | per seed "
             "| stages ran / cached | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f" ± {r['std']:.2%}" if len(r["accuracies"]) > 1 else ""
        per_seed = ", ".join(f"{a:.2%}" for a in r["accuracies"])
        lines.append(f"| {r['label']} | {METHOD_NAMES[r['method']]} | {r['lora_epochs']} "
                     f"| {r['reft_epochs']} "
                     f"| {r['total_epochs']} | {r['mean']:.2%}{spread} | {per_seed} "
                     f"| {r['ran']} / {r['cached']} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_epochs(rows: list[dict], path: Path) -> None:
    """Accuracy against total training epochs, one line per method, error bars = std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, method in enumerate(methods):
        mine = [r for r in rows if r["method"] == method]
        dx = 0.06 * (i - (len(methods) - 1) / 2)  # small offsets: methods at one x stay visible
        # every cell as a point (error bar = std over seeds); the line joins the best cell at
        # each epoch count (cells at one x differ in layer, rank, or the LoRA/ReFT split)
        pts = ax.errorbar([r["total_epochs"] + dx for r in mine], [100 * r["mean"] for r in mine],
                          yerr=[100 * r["std"] for r in mine], fmt="o", capsize=3, alpha=0.7,
                          label=METHOD_NAMES[method])
        best = {}
        for r in mine:
            best[r["total_epochs"]] = max(best.get(r["total_epochs"], 0.0), r["mean"])
        xs = sorted(best)
        ax.plot([x + dx for x in xs], [100 * best[x] for x in xs], color=pts[0].get_color(), lw=1)
    ax.axhline(100 * rows[0]["majority_rate"], color="grey", ls="--", lw=1, label="majority rate")
    ax.xaxis.get_major_locator().set_params(integer=True)
    finish(fig, ax, path, "total training epochs (LoRA + ReFT)", "held-out accuracy (%)",
           "accuracy vs. training epochs")


def finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, grid, legend; save the figure and free it (the plots of reports and studies)."""
    import matplotlib.pyplot as plt
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _order(value):
    """Numbers in numeric order, then strings (positions like 'f1+l1') alphabetically."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def ablation_axes(spec: GridSpec) -> list[str]:
    """Grid axes with more than one value, layer fractions shown as resolved layers."""
    return ["reft.layer" if k == LAYER_FRACTION else k for k, v in spec.axes if len(v) > 1]


def plot_ablation(rows: list[dict], axes: list[str], path: Path) -> bool:
    """Heatmap over the first two varying axes (e.g. ReFT layer x low-rank dimension), or a
    bar chart for one axis.  False (no plot) when a pair of values maps to several rows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not axes:
        return False
    ykey, xkey = axes[0], axes[1] if len(axes) > 1 else None
    cells = {(r["settings"].get(ykey), r["settings"].get(xkey) if xkey else None): r["mean"] for r in rows}
    if len(cells) != len(rows):
        return False
    ys = sorted({k[0] for k in cells}, key=_order)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    if xkey is None:
        bars = ax.bar([str(y) for y in ys], [100 * cells[(y, None)] for y in ys])
        ax.bar_label(bars, fmt="%.1f")
        ax.axhline(100 * rows[0]["majority_rate"], color="grey", ls="--", lw=1, label="majority rate")
        ax.legend(fontsize=8)
        ax.set_xlabel(ykey)
        ax.set_ylabel("held-out accuracy (%)")
    else:
        xs = sorted({k[1] for k in cells}, key=_order)
        grid = [[100 * cells.get((y, x), float("nan")) for x in xs] for y in ys]
        im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="white", fontsize=9)
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set_xlabel(xkey)
        ax.set_ylabel(ykey)
        fig.colorbar(im, ax=ax, label="held-out accuracy (%)")
    ax.set_title("ablation: mean held-out accuracy")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(folder: Path, spec: GridSpec, cells: list[Cell], results: list[CellResult]) -> dict:
    """report.md, results.csv, grid.yaml and the PNGs in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = aggregate(results)
    files = {"report": folder / "report.md", "results": folder / "results.csv", "grid": folder / "grid.yaml",
             "epochs_plot": folder / "accuracy_vs_epochs.png"}
    text = markdown(spec, rows)
    files["report"].write_text(text)
    with open(files["results"], "w", newline="") as f:
        fields = [k for k in CellResult.__dataclass_fields__ if k != "settings"] + ["settings"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in results:
            w.writerow(asdict(r) | {"settings": yaml.safe_dump(r.settings, default_flow_style=True).strip()})
    files["grid"].write_text(yaml.safe_dump(spec_dict(spec, cells), sort_keys=False))
    plot_epochs(rows, files["epochs_plot"])
    if plot_ablation(rows, ablation_axes(spec), folder / "ablation.png"):
        files["ablation_plot"] = folder / "ablation.png"
    return {"markdown": text, "rows": rows, "files": files}
