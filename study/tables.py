"""The numbers of a study: per-cell accuracies by label, paired comparisons, curves,
intruder dimensions and flips, all computed from cells read back by study.spec.gather.
Which comparisons and curves, and the paper's figures, come from the study spec."""
from __future__ import annotations

import statistics
from collections import defaultdict

from heft.stats import discordant, mcnemar, paired_seeds, wilson_interval
from heft.store.artifacts import Artifact
from heft.grids.diagnostics import flips, spectrum
from study.spec import CellData

def by_label(cells: list[CellData]) -> dict[str, list[CellData]]:
    groups: dict[str, list[CellData]] = defaultdict(list)
    for c in cells:
        groups[c.cell.label].append(c)
    return {k: sorted(v, key=lambda c: c.cell.seed) for k, v in groups.items()}


def find(groups: dict[str, list[CellData]], prefix: str) -> tuple[str, list[CellData]] | None:
    for label, cells in groups.items():
        if label == prefix or label.startswith(prefix + " "):
            return label, cells
    return None


def train_seconds(c: CellData) -> float:
    """Training wall time of the cell's stages, summed from their per-epoch histories (the
    epochs were timed when first trained, so this is the same whether or not cached)."""
    return sum(h.get("epoch_seconds", 0.0) for s in c.cell.epochs for h in c.history(s))


def table(cells: list[CellData], paper: dict[str, float] | None = None) -> list[dict]:
    """One row per label: epochs, accuracies per seed, mean, std, training seconds, and the
    paper's figure for a label that ``paper`` names (matched by prefix)."""
    paper = paper or {}
    rows = []
    for label, cs in by_label(cells).items():
        acc = [100 * c.accuracy for c in cs]
        first = cs[0]
        finals = [c.final_metrics for c in cs]
        final = finals[0]
        correct = sum(round(c.accuracy * m["n"]) for c, m in zip(cs, finals))
        low, high = wilson_interval(correct, sum(m["n"] for m in finals))
        valids = [validation(c) for c in cs]
        rows.append({"label": label, "method": first.cell.method, "epochs": dict(first.cell.epochs),
                     "ci95_low": 100 * low, "ci95_high": 100 * high,  # pooled over the seeds' predictions
                     "valid": statistics.fmean(valids) if None not in valids else None,
                     "seeds": [c.cell.seed for c in cs], "acc": acc, "mean": statistics.fmean(acc),
                     "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "train_s": statistics.fmean(train_seconds(c) for c in cs),
                     "majority": 100 * final["majority_rate"], "n": final["n"],
                     "chance": 100 * final["chance_rate"] if "chance_rate" in final else None,
                     "acc_norm": (100 * statistics.fmean(m["accuracy_norm"] for m in finals)
                                  if "accuracy_norm" in final else None),
                     "paper": next((v for k, v in paper.items() if label == k or label.startswith(k + " ")),
                                   None)})
    return rows


def validation(c: CellData) -> float | None:
    """Validation accuracy (%) of the cell's final model: its last training stage's last epoch."""
    valid = c.valid_accuracy
    return 100 * valid if valid is not None else None


def compare(a: list[CellData], b: list[CellData]) -> dict:
    """Seed-paired t-test on accuracies, plus McNemar pooled over seeds on the examples
    (each seed's a/b predictions on the same held-out rows are the pairs)."""
    seeds = sorted({c.cell.seed for c in a} & {c.cell.seed for c in b})
    pa = {c.cell.seed: c for c in a}
    pb = {c.cell.seed: c for c in b}
    out = paired_seeds([100 * pa[s].accuracy for s in seeds], [100 * pb[s].accuracy for s in seeds])
    only_a = only_b = 0
    for s in seeds:
        (x, y), (z, _) = pa[s].predictions(), pb[s].predictions()
        a_right, b_right = discordant(x, z, y)
        only_a += a_right
        only_b += b_right
    out.update(seeds=seeds, only_a_right=only_a, only_b_right=only_b, mcnemar_p=mcnemar(only_a, only_b))
    return out


def verdict(cmp: dict) -> str:
    if cmp["mcnemar_p"] < 0.05 and cmp["mean_diff"] != 0:
        return ("higher" if cmp["mean_diff"] > 0 else "lower") + " (significant, McNemar p < 0.05)"
    return "no significant difference"


def comparisons(cells: list[CellData], pairs: tuple = ()) -> list[dict]:
    """The paired comparison of every (a, b, question) in ``pairs`` whose cells both ran."""
    groups, out = by_label(cells), []
    for a, b, question in pairs:
        fa, fb = find(groups, a), find(groups, b)
        if fa and fb:
            cmp = compare(fa[1], fb[1])
            out.append(dict(cmp, a=fa[0], b=fb[0], question=question, verdict=verdict(cmp)))
    return out


def curves(cells: list[CellData], labels: tuple = ()) -> dict[str, list[list[float]]]:
    """Per-epoch validation accuracy (%) per seed of the cells ``labels`` name (by prefix):
    x = total epochs trained so far."""
    groups, out = by_label(cells), {}
    for prefix in labels:
        if (found := find(groups, prefix)):
            label, cs = found
            out[label] = [[100 * h["valid_accuracy"] for s in c.cell.epochs for h in c.history(s)
                           if "valid_accuracy" in h] for c in cs]
    return out


def lora_spectra(cells: list[CellData], k: int = 10) -> list[dict]:
    """Intruder dimensions of each distinct merged LoRA model (base vs merged weights)."""
    seen, rows = set(), []
    for c in cells:
        merge = c.artifacts.get("merge")
        if merge is None or merge.key in seen:
            continue
        seen.add(merge.key)
        per_weight = spectrum(_weights(c.artifacts["base"], c), _weights(merge, c), k=k)
        rows.append({"label": c.cell.label, "seed": c.cell.seed, "merge_key": merge.key,
                     "lora_epochs": c.cell.config.lora.epochs,
                     "lora_rank": c.cell.config.lora.rank, "weights": len(per_weight),
                     "intruders@0.5": sum(r["intruders@0.5"] for r in per_weight),
                     "intruders@0.7": sum(r["intruders@0.7"] for r in per_weight),
                     "relative_update": statistics.fmean(r["relative_update"] for r in per_weight),
                     "update_rank": max(r["update_rank"] for r in per_weight), "per_weight": per_weight})
    return rows


def _weights(art: Artifact, c: CellData) -> dict:
    from heft.stages.inputs import StageInputs  # torch: only the spectra load weights
    model = StageInputs.of(art, c.store).load_weights(c.cell.config.lora.seed)
    return {n: p.detach().cpu() for n, p in model.named_parameters()}


def reft_flips(cells: list[CellData]) -> list[dict]:
    """For each HEFT cell: what the ReFT stage did to the merged LoRA model's predictions."""
    rows = []
    for c in cells:
        if c.cell.method != "heft":
            continue
        before, labels = c.predictions("merged")
        after, _ = c.predictions("heft")
        rows.append(dict(flips(before, after, labels), label=c.cell.label, seed=c.cell.seed))
    return rows


def flips_by_label(rows: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["label"]].append(r)
    out = []
    for label, rs in groups.items():
        fixed, broken = sum(r["fixed"] for r in rs), sum(r["broken"] for r in rs)
        out.append({"label": label, "seeds": len(rs),
                    "before_wrong": statistics.fmean(r["before_wrong"] for r in rs),
                    "fix_rate": statistics.fmean(r["fix_rate"] for r in rs),
                    "break_rate": statistics.fmean(r["break_rate"] for r in rs),
                    "changed": statistics.fmean(r["changed"] for r in rs),
                    "net": statistics.fmean(r["net"] for r in rs), "mcnemar_p": mcnemar(fixed, broken)})
    return out
