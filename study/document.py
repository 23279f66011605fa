"""docs/results.md and its PNGs from a finished study (numbers from study/tables.py).

The document's shape is fixed here; its words about one study (title, the numbered section
headings, the paper's model, reproduce commands) come from the study's facts (its YAML,
read by study/spec.py)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from study import measured
from heft.grids.plots import finish
from study.tables import curves, table
from study.verdicts import grid_lines


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _epochs(e: dict) -> str:
    return "+".join(f"{e[s]} {s}" for s in e) or "0"


def acc_table(rows: list[dict], paper_model: str = "") -> list[str]:
    """The accuracy table; with ``paper_model``, a column of the paper's figures on that model."""
    paper = bool(paper_model)
    head = ("| cell | epochs trained | held-out accuracy (mean ± std) | 95% CI (pooled) | per seed "
            "| validation | train s |")
    head += f" paper ({paper_model}) |" if paper else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        seeds = ", ".join(f"{a:.2f}" for a in r["acc"])
        valid = f"{r['valid']:.2f}" if r.get("valid") is not None else "-"
        line = (f"| {r['label']} | {_epochs(r['epochs'])} | **{r['mean']:.2f}** ± {r['std']:.2f} "
                f"| {r['ci95_low']:.2f}-{r['ci95_high']:.2f} | {seeds} | {valid} | {r['train_s']:.0f} |")
        lines.append(line + (f" {r['paper']:.2f} |" if r["paper"] else " |") if paper else line)
    return lines


def _recipe_text(recipe: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in recipe.items())


def recipe_use(rows: list[dict], used: dict) -> str:
    """Whether the sections below run the chosen recipe, read off their config (a study whose
    preset was not switched to the chosen recipe says so, and says what differs)."""
    chosen = next((r for r in rows if r["chosen"]), None)
    if chosen is None:
        return "No recipe has a validation curve, so none is chosen."
    if chosen["recipe"] == used:
        return (f"The sections below run the chosen recipe, {chosen['label']} "
                f"({_recipe_text(used)}), at the study's own epochs and rows.")
    differ = {k: (chosen["recipe"][k], used[k]) for k in used if chosen["recipe"].get(k) != used[k]}
    ran = next((r["label"] for r in rows if r.get("used")), None)
    return ("The sections below do **not** run the chosen recipe: they run "
            f"{'the recipe ' + ran if ran else 'a recipe not in this search'} "
            f"({'; '.join(f'{k} {b} where the chosen one has {a}' for k, (a, b) in differ.items())}).")


def recipe_table(rows: list[dict]) -> list[str]:
    lines = ["| recipe | validation accuracy after each epoch | held-out accuracy | 95% CI | chosen |",
             "|---|---|---|---|---|"]
    for r in rows:
        curve = " → ".join(f"{v:.2f}" for v in r["valid_curve"]) or "-"
        lines.append(f"| {r['label']} | {curve} | {r['mean']:.2f} | {r['ci95_low']:.2f}-{r['ci95_high']:.2f} "
                     f"| {'★ (best validation)' if r['chosen'] else ''}"
                     f"{' · run in the sections below' if r.get('used') else ''} |")
    return lines


def plot_curves(data: dict[str, list[list[float]]], majority: float, path: Path) -> None:
    """Validation accuracy after every epoch, mean over seeds with a ±1 std band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, per_seed in data.items():
        n = min(len(s) for s in per_seed)
        if n == 0:
            continue
        xs = list(range(1, n + 1))
        mean = [statistics.fmean(s[i] for s in per_seed) for i in range(n)]
        std = [statistics.stdev(s[i] for s in per_seed) if len(per_seed) > 1 else 0.0 for i in range(n)]
        line, = ax.plot(xs, mean, marker="o", ms=3, label=label)
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.15)
    ax.axhline(majority, color="grey", ls="--", lw=1, label="majority rate")
    finish(fig, ax, path, "epochs trained (LoRA epochs, then ReFT epochs)", "validation accuracy (%)",
           "accuracy vs. epochs (mean ± std over seeds)")


def plot_bars(rows: list[dict], majority: float, title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 0.45 * len(rows) + 1.6), dpi=120)
    labels = [r["label"] for r in rows][::-1]
    means = [r["mean"] for r in rows][::-1]
    errs = [r["std"] for r in rows][::-1]
    bars = ax.barh(labels, means, xerr=errs, capsize=3, color="tab:blue", alpha=0.8)
    ax.bar_label(bars, fmt="%.2f", padding=4, fontsize=8)
    ax.axvline(majority, color="grey", ls="--", lw=1, label="majority rate")
    lo = min(min(means), majority) - 3
    ax.set_xlim(lo, max(means) + 3)
    ax.set_xlabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_spectra(spectra: list[dict], path: Path) -> None:
    """Left: intruders per LoRA model. Right: top singular values of the most changed
    weight, base vs merged, for the shortest and longest LoRA runs of seed 0."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    xs = range(len(spectra))  # positions, not names: two LoRA models may share a description
    a1.bar(xs, [s["intruders@0.5"] for s in spectra], color="tab:red", label="max |cos| < 0.5")
    a1.bar(xs, [s["intruders@0.7"] - s["intruders@0.5"] for s in spectra], color="tab:orange",
           bottom=[s["intruders@0.5"] for s in spectra], alpha=0.6, label="0.5 ≤ max |cos| < 0.7")
    a1.set_xticks(xs, [f"{s['lora_epochs']} ep, r{s['lora_rank']}, s{s['seed']}" for s in spectra])
    a1.set_ylabel(f"intruders in top-10 of {spectra[0]['weights']} weights")
    a1.tick_params(axis="x", rotation=60, labelsize=7)
    a1.legend(fontsize=8)
    a1.set_title("intruder dimensions per merged LoRA model")
    seed0 = [s for s in spectra if s["seed"] == min(x["seed"] for x in spectra)]
    def epochs(s):
        return s["lora_epochs"]
    for s, style in ((min(seed0, key=epochs), ":"), (max(seed0, key=epochs), "-")):
        w = max(s["per_weight"], key=lambda r: r["relative_update"])
        if style == ":":
            a2.plot(w["sv_base"], "k--", label=f"base {w['name'].split('.', 1)[-1]}")
        a2.plot(w["sv_tuned"], style, marker="o", ms=3, label=f"merged, {s['lora_epochs']} LoRA epochs")
        a2.plot(w["sv_update"], style, marker="x", ms=3, label=f"update dW, {s['lora_epochs']} epochs")
    a2.set_yscale("log")
    a2.set_xlabel("singular value index")
    a2.set_title("spectrum of the most changed weight")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main_plots(cells, folder: Path, spec) -> dict[str, Path]:
    rows = table(cells, spec.paper)
    files = {"curves": folder / "curves.png", "comparison": folder / "comparison.png"}
    plot_curves(curves(cells, spec.curves), rows[0]["majority"], files["curves"])
    plot_bars(rows, rows[0]["majority"], "held-out accuracy by cell (mean ± std over seeds)",
              files["comparison"])
    return files


def _cmp_table(cmps: list[dict]) -> list[str]:
    lines = ["| question | a | b | a − b (points, mean ± std over seeds) | a wins | paired t p | "
             "only a right / only b right (pooled) | McNemar p | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cmps:
        lines.append(f"| {c['question']} | {c['a']} | {c['b']} | {c['mean_diff']:+.2f} ± {c['std_diff']:.2f} "
                     f"| {c['wins']}/{c['n']} | {'-' if math.isnan(c['p']) else format(c['p'], '.3f')} "
                     f"| {c['only_a_right']} / {c['only_b_right']} "
                     f"| {c['mcnemar_p']:.3f} | {c['verdict']} |")
    return lines


def seed_test(rows: list[dict]) -> str:
    """The seed-paired test the table's t column holds, for the number of seeds that ran."""
    n = min((len(r["seeds"]) for r in rows), default=0)
    if n < 2:
        return f"no paired t-test: {n} seed, so the t column is '-'"
    return f"paired t-test over the seeds, {n - 1} degree{'s' if n > 2 else ''} of freedom with {n} seeds"


def paper_order(rows: list[dict], paper_model: str) -> list[str]:
    """The cells with a paper figure in the paper's order, ours beside them."""
    ours = {r["label"]: r for r in rows if r["paper"] is not None}
    if len(ours) < 2:
        return []
    paper = sorted(ours, key=lambda k: -ours[k]["paper"])
    mine = sorted(ours, key=lambda k: -ours[k]["mean"])

    def chain(keys, field):
        return " > ".join("%s (%.2f)" % (k, ours[k][field]) for k in keys)
    return [f"- Paper's order ({paper_model}): {chain(paper, 'paper')}.",
            f"- Ours (mean over seeds): {chain(mine, 'mean')}.",
            f"- The order is {'the same' if paper == mine else 'not the same'}; differences that are not "
            "significant in the paired table above are ties at this scale."]


def omitted(sections: dict, headings: dict[str, str]) -> list[str]:
    """The setup line naming the numbered sections this study has no grid for ([] if none)."""
    missing = [headings[name] for name, present in (("recipes", sections["recipes"]),
                                                    ("ablation", sections["ablation_rows"]),
                                                    ("tasks", sections["tasks"] or sections.get("measured")))
               if not present]
    return [f"- Not in this study (its spec runs no grid for them): {'; '.join(missing)}."] if missing else []


def render(title: str, study_name: str, setup: list[str], sections: dict, headings: dict[str, str],
           paper_model: str) -> str:
    """The whole results.md; ``sections`` holds the computed parts (study/assemble.py), ``headings``
    the numbered heading of each of study.spec.SECTIONS (the README and presets cite the numbers)."""
    s, h = sections, headings
    out = [f"# Results: {title} (study `{study_name}`)", "",
           "Generated by `make results` (flow `heft-study`) from runs of the committed code; "
           "every number below is read back from the study's artifact store. Do not edit by hand.", "",
           "## Setup", "", *setup, *omitted(sections, headings), ""]
    if s["recipes"]:
        out += [f"## {h['recipes']}", "",
                "Each recipe trains LoRA only, with a constant schedule (epoch 1 is a prefix of epoch 2); "
                "the recipe with the best validation accuracy after any epoch is chosen. "
                "The held-out column is shown for the record: choosing by it would make the reported "
                "held-out numbers optimistic.", "", *recipe_table(s["recipes"]), "",
                recipe_use(s["recipes"], s["recipe_used"]), ""]
    out += [f"## {h['comparison']}", "", *acc_table(s["main_rows"], paper_model), "",
           "![held-out accuracy by cell](results/comparison.png)", "",
           f"## {h['paired']}", "",
           "Every cell is evaluated on the same held-out rows with the same seeds, so each pair of "
           f"cells is compared seed by seed ({seed_test(s['main_rows'])}) "
           "and example by example (exact McNemar test on the examples exactly one of the "
           "two gets right, pooled over seeds: the pairs are held-out rows x seeds, so the same row "
           "counts once per seed). The verdict uses McNemar at p < 0.05.", "",
           *_cmp_table(s["comparisons"]), "",
           "### Where the paper's ordering holds at this scale", "", *s["verdicts"],
           *paper_order(s["main_rows"], paper_model), "", "### The paper's claims at this scale", "",
           *s["claims"], "", f"## {h['curves']}", "",
           "Validation accuracy (the validation rows, not the held-out ones) after every epoch; "
           "for HEFT the LoRA epochs come first, then the ReFT epochs on the merged model. With "
           "constant learning rates a shorter run is the prefix of a longer one, so each curve is "
           "one trajectory per seed.", "", "![accuracy vs epochs](results/curves.png)", ""]
    # Sections keep their numbers in every study (the README and presets cite them); one whose
    # grid the study does not run is left out, and the setup says so.
    if s["ablation_rows"]:
        out += [f"## {h['ablation']}", "",
                *acc_table(s["ablation_rows"]), "", "![ablation](results/ablation.png)", ""]
    if s["tasks"] or s.get("measured"):
        out += [f"## {h['tasks']}", ""]
        for title, rows in s["tasks"]:  # each task grid says whether its own cells learn
            out += [f"### {title}", "", *acc_table(rows), "", *grid_lines(rows), ""]
        for entry, record in s.get("measured", []):
            out += measured.section(entry, record)
    out += [f"## {h['intruders']}", "",
            f"For every LoRA-updated weight W ({s['lora_targets']} of every block) and its merged "
            "W' = W + (alpha/r) B A: the top-10 left singular vectors of W' whose largest |cosine| "
            "with any left singular vector of W is below 0.5 (or 0.7), summed over the weights "
            "(Shuttleworth et al., 2024). Relative update = ||W' − W|| / ||W||, mean over weights.", "",
            "| LoRA model | seed | LoRA epochs | LoRA rank | weights | intruders (<0.5) | intruders (<0.7) "
            "| relative update | max rank of dW |", "|---|---|---|---|---|---|---|---|---|"]
    for r in s["spectra"]:
        out.append(f"| {r['label']} | {r['seed']} | {r['lora_epochs']} | {r['lora_rank']} | {r['weights']} "
                   f"| {r['intruders@0.5']} | {r['intruders@0.7']} | {r['relative_update']:.2e} "
                   f"| {r['update_rank']} |")
    out += ["", "![intruder dimensions](results/intruders.png)", "",
            f"## {h['flips']}", "",
            "Held-out predictions of the merged LoRA model (before) and of the same model with the "
            "trained intervention (after), example by example, mean over seeds.", "",
            "| HEFT cell | seeds | LoRA errors | fixed by ReFT (share of errors) | broken by ReFT "
            "(share of correct) | predictions changed | net gain | McNemar p (pooled) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in s["flips"]:
        out.append(f"| {r['label']} | {r['seeds']} | {r['before_wrong']:.1f} | {100 * r['fix_rate']:.2f}% "
                   f"| {100 * r['break_rate']:.2f}% | {r['changed']:.1f} | {r['net']:+.1f} "
                   f"| {r['mcnemar_p']:.3f} |")
    out += ["", "## Reproduce", "", *s["reproduce"], ""]
    return "\n".join(out)
