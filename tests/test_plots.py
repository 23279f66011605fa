"""The grid report's plots say what the numbers say: the ★ sits on the best cell's own dot (its
method's x-offset included), a one-axis sweep is dots with 95% whiskers on an axis that starts
near the data (no bars: a bar's length on an axis starting near 56% means nothing), and two axes
are a heatmap with every value printed.  Constructed rows, no training; matplotlib's calls are
recorded."""
from __future__ import annotations

import matplotlib
import pytest

from heft.grids.plots import plot_ablation, plot_epochs

matplotlib.use("Agg")


def row(label, method, total, mean, settings=None, lo=0.02, hi=0.02):
    return {"label": label, "title": label, "method": method, "total_epochs": total, "mean": mean,
            "ci95_low": mean - lo, "ci95_high": mean + hi, "majority_rate": 0.6217,
            "settings": settings or {}}


@pytest.fixture
def calls(monkeypatch):
    """{'errorbar': [(x, y, kwargs)], 'plot': [...], 'bar': [...], 'text': [...]}."""
    from matplotlib.axes import Axes
    seen: dict[str, list] = {"errorbar": [], "plot": [], "bar": [], "text": []}
    for name in seen:
        original = getattr(Axes, name)

        def record(self, *args, _name=name, _original=original, **kwargs):
            seen[_name].append((args, kwargs))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(Axes, name, record)
    return seen


def test_the_star_sits_on_the_best_cells_dot_with_its_methods_offset(tmp_path, calls):
    rows = [row("HEFT 3+3", "heft", 6, 0.66), row("LoRA-only 6", "lora-only", 6, 0.64),
            row("ReFT-only 6", "reft-only", 6, 0.62), row("HEFT 20+20", "heft", 40, 0.67)]
    best = rows[0]
    assert plot_epochs(rows, tmp_path / "epochs.png", best)
    (star,) = [(a, k) for a, k in calls["plot"] if k.get("marker") == "*"]
    star_x, star_y = star[0][0][0], star[0][1][0]
    heft_dots = next(a for a, k in calls["errorbar"] if k["label"] == "HEFT (LoRA->ReFT)")
    assert (star_x, star_y) == (heft_dots[0][0], heft_dots[1][0]) == (pytest.approx(6 - 0.06), 66.0)
    lora_dots = next(a for a, k in calls["errorbar"] if k["label"] == "LoRA only")
    assert lora_dots[0][0] == pytest.approx(6.0) != star_x  # not on the LoRA-only point beside it


def test_one_axis_is_dots_with_whiskers_not_bars(tmp_path, calls):
    sweep = ((1, 0.611), (2, 0.597), (3, 0.616))
    rows = [row(f"layer={x}", "heft", 2, m, {"reft.layer": x}) for x, m in sweep]
    assert plot_ablation(rows, ["reft.layer"], tmp_path / "ablation.png", rows[2])
    assert calls["bar"] == []
    ((args, kwargs),) = calls["errorbar"]
    assert [round(y, 1) for y in args[1]] == [61.1, 59.7, 61.6] and kwargs["fmt"] == "o"
    assert kwargs["yerr"] == [[pytest.approx(2.0)] * 3, [pytest.approx(2.0)] * 3]  # the 95% whiskers
    (star,) = [(a, k) for a, k in calls["plot"] if k.get("marker") == "*"]
    assert (star[0][0], star[0][1]) == ([2], [pytest.approx(61.6)])


def test_two_axes_are_a_heatmap_with_every_value_printed(tmp_path, calls):
    rows = [row(f"l{y} r{r}", "heft", 2, 0.6 + y / 100 + r / 1000, {"reft.layer": y, "reft.rank": r})
            for y in (1, 2) for r in (2, 4)]
    assert plot_ablation(rows, ["reft.layer", "reft.rank"], tmp_path / "heatmap.png", rows[3])
    printed = [args[2] for args, _ in calls["text"]]
    assert len(printed) == 4 and printed[3].startswith("62.4 ★") and printed[0].startswith("61.2\n")
