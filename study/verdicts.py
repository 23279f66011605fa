"""The sentences of results.md that judge: each derived from the numbers it describes.

Nothing here is written for one study: which claims are the paper's, and their direction, come
from the study's facts (the paper's figures for the two cells of a comparison); whether a
claim holds comes from our paired test; whether the cells learned at all comes from their
intervals against the held-out majority rate.  A comparison is *significant* at McNemar
p < 0.05 on the pooled paired predictions.
"""
from __future__ import annotations

ALPHA = 0.05


def status(cmp: dict, paper: dict[str, float]) -> str:
    """'holds', 'does not hold' or 'tie' for a comparison the paper orders (by its figures of
    a and b), '' when the paper gives no figure for one of the two cells."""
    pa, pb = figure(paper, cmp["a"]), figure(paper, cmp["b"])
    if pa is None or pb is None or pa == pb:
        return ""
    if cmp["mcnemar_p"] >= ALPHA or cmp["mean_diff"] == 0:
        return "tie"
    return "holds" if (cmp["mean_diff"] > 0) == (pa > pb) else "does not hold"


def figure(paper: dict[str, float], label: str) -> float | None:
    return next((v for k, v in paper.items() if label == k or label.startswith(k + " ")), None)


def comparison_line(cmp: dict, paper: dict[str, float]) -> str:
    """'- **HEFT 3+3 vs LoRA-only 20** (question): +1.20 points, HEFT 3+3 higher (McNemar p = 0.003);
    the paper's claim (HEFT 3+3 85.17 > LoRA-only 20 85.05) holds.'"""
    d, p = cmp["mean_diff"], cmp["mcnemar_p"]
    if p < ALPHA and d != 0:
        outcome = f"{cmp['a'] if d > 0 else cmp['b']} higher (McNemar p = {p:.3g})"
    else:
        outcome = f"no significant difference (McNemar p = {p:.3g}): a tie at this scale"
    line = (f"- **{cmp['a']} vs {cmp['b']}** ({cmp['question']}): {d:+.2f} points over {cmp['n']} "
            f"seed(s), {outcome}")
    s = status(cmp, paper)
    if s:
        pa, pb = figure(paper, cmp["a"]), figure(paper, cmp["b"])
        order = f"{cmp['a']} {pa:.2f} {'>' if pa > pb else '<'} {cmp['b']} {pb:.2f}"
        line += f"; the paper's order ({order}) {'is a tie here' if s == 'tie' else s}"
    return line + "."


def learning_line(rows: list[dict]) -> str:
    """How many cells learned: the lower end of their held-out interval above the majority rate
    (each cell against its own held-out rows' rate; rows in percent)."""
    majorities = sorted({round(r["majority"], 2) for r in rows})
    learned = [r for r in rows if r["ci95_low"] > r["majority"]]
    best = max(rows, key=lambda r: r["mean"])
    rate = " / ".join(f"{m:.2f}%" for m in majorities)
    line = (f"- Held-out majority rate (always giving the majority answer): {rate}. "
            f"{len(learned)} of {len(rows)} cells learn beyond it (the lower end of the 95% interval "
            "above it); "
            f"the best mean is {best['label']} at {best['mean']:.2f}% "
            f"({best['ci95_low']:.2f}-{best['ci95_high']:.2f}%).")
    if not learned:
        line += (" No cell clears the majority rate, so the comparisons above measure how much each method "
                 "departs from the label prior, not how much it learns.")
    elif len(learned) < len(rows):
        rest = ", ".join(r["label"] for r in rows if r not in learned)
        line += f" Cells that do not clear it: {rest}."
    return line


def held_out_line(rows: list[dict]) -> str:
    """What a grid's held-out numbers are out of: each grid of a study may hold out other rows."""
    sizes = sorted({(r["n"], round(r["majority"], 2)) for r in rows})
    return "Held out: " + "; ".join(f"{n} rows, majority rate {m:.2f}%" for n, m in sizes) + "."


def grid_lines(rows: list[dict]) -> list[str]:
    """Under a grid's table: what its held-out numbers are out of, then whether its cells learn."""
    return [held_out_line(rows), "", learning_line(rows)]


def summary(cmps: list[dict], paper: dict[str, float]) -> list[str]:
    """The paper's claims grouped by what our numbers say of them."""
    groups = {"holds": [], "does not hold": [], "tie": []}
    for c in cmps:
        if (s := status(c, paper)):
            groups[s].append(f"{c['a']} vs {c['b']}")
    out = []
    for name, title in (("holds", "Hold"), ("does not hold", "Do not hold"), ("tie", "Ties at this scale")):
        out.append(f"- **{title}:** " + ("; ".join(groups[name]) if groups[name] else "none") + ".")
    return out
