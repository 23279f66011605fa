"""The grid report's plots: drawn only where their x axis varies, axes that start where the
data is (not at 0: 61.1 and 61.6% must not look alike), dots with whiskers for each row's 95%
interval (never bars: on an axis that starts near 56% a bar's length means nothing), the
held-out majority rate as a reference line, and the best cell (by validation accuracy) marked
with a ★ where its dot is."""
from __future__ import annotations

from pathlib import Path

from heft.grids.spec import LAYER_FRACTION, GridSpec
from heft.modes import MODES


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, grid, legend; save the figure and free it (the plots of reports and studies)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)


def limits(values: list[float], pad: float = 0.15) -> tuple[float, float]:
    """An axis range around the data (and the reference lines), padded, never forced to 0."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, 1.0)
    return lo - pad * span, hi + pad * span


def name(row: dict) -> str:
    """A row as the report names it ('HEFT 20+20 (x0.1 = 2+2)')."""
    return row.get("title") or row["label"]


def _errors(rows: list[dict]) -> list[list[float]]:
    # clamped at 0: at 100% accuracy the interval's upper end rounds a hair below the mean
    return [[max(0.0, 100 * (r["mean"] - r["ci95_low"])) for r in rows],
            [max(0.0, 100 * (r["ci95_high"] - r["mean"])) for r in rows]]


def plot_epochs(rows: list[dict], path: Path, best: dict | None = None) -> bool:
    """Held-out accuracy against total training epochs, one series per method, error bars =
    95% intervals.  False (no plot) when every cell trained the same number of epochs."""
    if len({r["total_epochs"] for r in rows}) < 2:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    # small offsets: methods at one x stay visible (the ★ takes its method's offset too)
    offset = {m: 0.06 * (i - (len(methods) - 1) / 2) for i, m in enumerate(methods)}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        ax.errorbar([r["total_epochs"] + offset[method] for r in mine], [100 * r["mean"] for r in mine],
                    yerr=_errors(mine), fmt="o", capsize=3, alpha=0.8, label=MODES[method].title)
    majority = 100 * rows[0]["majority_rate"]
    ax.axhline(majority, color="grey", ls="--", lw=1, label="held-out majority rate")
    if best:
        ax.plot([best["total_epochs"] + offset[best["method"]]], [100 * best["mean"]], marker="*", ms=16,
                color="gold", mec="black", ls="none", label=f"best by validation: {name(best)}")
    ax.set_ylim(*limits([100 * r["ci95_low"] for r in rows] + [100 * r["ci95_high"] for r in rows]
                        + [majority]))
    ax.xaxis.get_major_locator().set_params(integer=True)
    finish(fig, ax, path, "total training epochs (LoRA + ReFT)", "held-out accuracy (%)",
           "held-out accuracy vs. training epochs (95% intervals)")
    return True


def _order(value):
    """Numbers in numeric order, then strings (positions like 'f1+l1') alphabetically."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def ablation_axes(spec: GridSpec) -> list[str]:
    """Grid axes with more than one value, layer fractions shown as resolved layers."""
    return ["reft.layer" if k == LAYER_FRACTION else k for k, v in spec.axes if len(v) > 1]


def plot_ablation(rows: list[dict], axes: list[str], path: Path, best: dict | None = None) -> bool:
    """Heatmap over the first two varying axes (e.g. ReFT layer x low-rank dimension), its values
    printed in the cells, or for one axis a dot plot with 95% interval whiskers.  False (no plot)
    when a pair of values maps to several rows."""
    if not axes:
        return False
    ykey, xkey = axes[0], axes[1] if len(axes) > 1 else None
    by = {(r["settings"].get(ykey), r["settings"].get(xkey) if xkey else None): r for r in rows}
    if len(by) != len(rows):
        return False
    plt = _plt()
    ys = sorted({k[0] for k in by}, key=_order)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    majority = 100 * rows[0]["majority_rate"]
    if xkey is None:
        ordered = [by[(y, None)] for y in ys]
        xs = range(len(ys))
        means = [100 * r["mean"] for r in ordered]
        ax.errorbar(xs, means, yerr=_errors(ordered), fmt="o", ms=7, capsize=5, color="tab:blue",
                    label="held-out accuracy, 95% interval")
        for x, mean in zip(xs, means):
            ax.annotate(f"{mean:.1f}", (x, mean), textcoords="offset points", xytext=(9, 0), va="center",
                        fontsize=8)
        if best is not None and best in ordered:
            i = ordered.index(best)
            ax.plot([i], [means[i]], marker="*", ms=16, color="gold", mec="black", ls="none",
                    label="best by validation")
        ax.set_xticks(list(xs), [str(y) for y in ys])
        ax.set_xlim(-0.5, len(ys) - 0.5)
        ax.axhline(majority, color="grey", ls="--", lw=1, label="held-out majority rate")
        ax.set_ylim(*limits([100 * r["ci95_low"] for r in ordered] + [100 * r["ci95_high"] for r in ordered]
                            + [majority], pad=0.25))
        ax.legend(fontsize=8)
        ax.set_xlabel(ykey)
        ax.set_ylabel("held-out accuracy (%), 95% intervals")
    else:
        xs = sorted({k[1] for k in by}, key=_order)
        grid = [[100 * by[(y, x)]["mean"] if (y, x) in by else float("nan") for x in xs] for y in ys]
        im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                r = by.get((y, x))
                if r is not None:
                    mark = " ★" if r is best else ""
                    ax.text(j, i, f"{100 * r['mean']:.1f}{mark}\n"
                                  f"±{50 * (r['ci95_high'] - r['ci95_low']):.1f}",
                            ha="center", va="center", color="white", fontsize=8)
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set_xlabel(xkey)
        ax.set_ylabel(ykey)
        fig.colorbar(im, ax=ax, label=f"held-out accuracy (%); majority {majority:.1f}")
    ax.set_title("ablation: held-out accuracy" + (f" (★ best by validation: {name(best)})" if best else ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
