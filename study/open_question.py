"""The paper's first open question: does HEFT's advantage carry over beyond yes/no answers?

One grid per task (a choice task and a generate task), each with the untrained model as a floor,
HEFT, and LoRA-only and ReFT-only at equal epochs and at the paper's ratio.  The section shows,
per task: the cells' held-out accuracy with Wilson intervals, the floors (the untrained model,
the chance rate of a choice task, the majority answer), the paired tests of the study's
comparisons (McNemar on right/wrong per held-out row, pooled over seeds) and one sentence derived
from those numbers.  The comparisons, the floor's label and the paper's figures come from the
study's facts (``open_question`` in its YAML); nothing here names a cell.

The sentence's rule, the paper's two claims read on each task: short HEFT *matches* long LoRA
(not significantly lower) and *beats* long ReFT (significantly higher).  Both hold: HEFT's
advantage carries over; one: it partly does; none: it does not.  A HEFT cell whose interval does
not clear the untrained model's accuracy has learned nothing to compare, and the sentence says so;
when neither long cell ran, the claims are called untested and the comparisons that ran are given.
"""
from __future__ import annotations

from study import tables
from study.spec import CellData
from study.verdicts import ALPHA

KINDS = {"choice": "multiple choice", "generate": "generation", "label": "yes/no labels"}


def task_of(cells: list[CellData]) -> dict:
    return cells[0].artifacts["data"].lineage("task")


def floor_line(rows: list[dict], floor: str) -> str:
    """The floors a cell must clear: the untrained model, the chance rate, the majority answer."""
    base = next((r for r in rows if r["label"] == floor), None)
    parts = [f"untrained model {base['mean']:.2f}% ({base['ci95_low']:.2f}-{base['ci95_high']:.2f}%)"] \
        if base else []
    if rows[0].get("chance") is not None:
        parts.append(f"chance rate {rows[0]['chance']:.2f}%")
    parts.append(f"always the most common answer {rows[0]['majority']:.2f}%")
    return f"Floors on these {rows[0]['n']} held-out rows: " + "; ".join(parts) + "."


def learned_line(rows: list[dict], floor: str) -> str:
    base = next((r for r in rows if r["label"] == floor), None)
    if base is None:
        return ""
    learned = [r for r in rows if r is not base and r["ci95_low"] > base["mean"]]
    others = [r["label"] for r in rows if r is not base and r not in learned]
    line = (f"{len(learned)} of {len(rows) - 1} trained cells clear the untrained model (the lower end of "
            "their 95% interval above its accuracy)")
    return line + (f"; not: {', '.join(others)}." if others else ".")


def claim(cmp: dict | None, wanted: str) -> str | None:
    """'holds' / 'does not hold' for one paper claim on one comparison ('match': HEFT not
    significantly lower; 'beat': HEFT significantly higher); None when it did not run."""
    if cmp is None:
        return None
    significant = cmp["mcnemar_p"] < ALPHA and cmp["mean_diff"] != 0
    if wanted == "match":
        return "does not hold" if significant and cmp["mean_diff"] < 0 else "holds"
    return "holds" if significant and cmp["mean_diff"] > 0 else "does not hold"


def verdict_line(name: str, kind: str, rows: list[dict], cmps: list[dict], facts: dict) -> str:
    """The sentence on one task, derived from its numbers (see the module docstring)."""
    heft = next((r for r in rows if r["label"] == facts["heft"]), None)
    base = next((r for r in rows if r["label"] == facts["floor"]), None)
    head = f"- **{name}** ({KINDS.get(kind, kind)}): "
    if heft is None:
        return head + f"{facts['heft']} did not run."
    if base is not None and heft["ci95_low"] <= base["mean"]:
        return head + (f"{heft['label']} scores {heft['mean']:.2f}% ({heft['ci95_low']:.2f}-"
                       f"{heft['ci95_high']:.2f}%), not clear of the untrained model's "
                       f"{base['mean']:.2f}%: it learned nothing to compare at this scale, so this run "
                       "cannot say whether HEFT's advantage carries over.")
    by_pair = {(c["a"], c["b"]): c for c in cmps}
    results = []
    for other, wanted in ((facts["match"], "match"), (facts["beat"], "beat")):
        cmp = by_pair.get((heft["label"], other))
        outcome = claim(cmp, wanted)
        if outcome is not None:
            verb = "matches" if wanted == "match" else "beats"
            results.append((outcome, f"{heft['label']} {verb} {other}: {outcome} "
                                     f"({cmp['mean_diff']:+.2f} points, McNemar p = {cmp['mcnemar_p']:.3g})"))
    if not results:  # the paper's comparison cells did not run: say so, give what did
        rest = [f"vs {c['b']} {c['mean_diff']:+.2f} points (McNemar p = {c['mcnemar_p']:.3g})"
                for c in cmps if c["a"] == heft["label"] and c["b"] != facts["floor"]]
        ran = "; ".join(rest) or "has no other cell to compare"
        return head + (f"{facts['match']} and {facts['beat']} did not run, so the paper's claims are not "
                       f"tested on this task; {heft['label']} {ran}.")
    held = sum(o == "holds" for o, _ in results)
    carried = "carries over" if results and held == len(results) else "partly carries over" if held \
        else "does not carry over"
    return head + "; ".join(text for _, text in results) + f". HEFT's advantage {carried} at this scale."


def section(grids: dict[str, list[CellData]], facts: dict) -> list[str]:
    """The markdown of the open-question section (heading, then one part per task grid)."""
    out = [f"## {facts['heading']}", "", facts.get("intro", ""), ""]
    verdicts = []
    for grid in facts["grids"]:
        cells = grids.get(grid)
        if not cells:
            continue
        task = task_of(cells)
        rows = tables.table(cells)
        cmps = tables.comparisons(cells, tuple(tuple(c) for c in facts["comparisons"]))
        title = facts.get("titles", {}).get(grid, task["name"])
        out += [f"### {title}", "", task_table(rows), "", floor_line(rows, facts["floor"]), "",
                learned_line(rows, facts["floor"]), "", *paired_table(cmps), ""]
        verdicts.append(verdict_line(title, task["kind"], rows, cmps, facts))
    return out + ["### Does HEFT's advantage carry over?", "", *verdicts, ""]


def task_table(rows: list[dict]) -> str:
    norm = any(r.get("acc_norm") is not None for r in rows)
    head = ("| cell | epochs trained | held-out accuracy | 95% CI (pooled) | "
            + ("acc_norm | " if norm else "") + "validation | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        epochs = "+".join(f"{r['epochs'][s]} {s}" for s in r["epochs"]) or "0"
        valid = f"{r['valid']:.2f}" if r.get("valid") is not None else "-"
        extra = f"{r['acc_norm']:.2f} | " if norm else ""
        lines.append(f"| {r['label']} | {epochs} | **{r['mean']:.2f}** | {r['ci95_low']:.2f}-"
                     f"{r['ci95_high']:.2f} | {extra}{valid} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def paired_table(cmps: list[dict]) -> list[str]:
    if not cmps:
        return []
    lines = ["| question | a | b | a − b (points) | only a right / only b right | McNemar p | verdict |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {c['question']} | {c['a']} | {c['b']} | {c['mean_diff']:+.2f} | {c['only_a_right']} / "
              f"{c['only_b_right']} | {c['mcnemar_p']:.3f} | {c['verdict']} |" for c in cmps]
    return lines
