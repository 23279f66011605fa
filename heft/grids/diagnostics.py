"""Diagnostics the HEFT paper proposes but does not run, and the paired statistics.

Intruder dimensions (Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of
Equivalence", 2024): take the top-k left singular vectors of a fine-tuned weight W' and,
for each, its largest |cosine| with *any* left singular vector of the base weight W.  A
vector that is nearly orthogonal to all of them (max |cos| < eps) is an "intruder": a new
high-energy direction that the base model did not have.  LoRA's update is low rank and
can be large along few directions, which is how intruders arise; the HEFT paper suggests
the LoRA stage's epochs control how many the later ReFT stage has to live with.

Flips: how the ReFT stage changes the predictions of the model it was trained on (the
merged LoRA model), example by example on the same held-out rows.

Everything here is plain torch on tensors and prediction lists (no files); the paired
tests are in heft/stats.py.
"""
from __future__ import annotations

import torch

from heft.stats import mcnemar

# weights no LoRA adapter touches: the seq-cls heads, the LM head, BERT's pooler
NOT_ADAPTED = ("classifier", "score", "lm_head", "pooler")


def intruders(base: torch.Tensor, tuned: torch.Tensor, k: int = 10, eps: float = 0.5) -> int:
    """How many of tuned's top-k left singular vectors have max |cos| < eps with every
    left singular vector of base (both float64: the SVD of a 384x384 matrix is exact
    enough there, and float32 cosines near 0.5 would flicker with the update's scale)."""
    u_base = torch.linalg.svd(base.double(), full_matrices=False).U
    u_tuned = torch.linalg.svd(tuned.double(), full_matrices=False).U[:, :k]
    best = (u_tuned.T @ u_base).abs().max(dim=1).values  # (k,): best match of each tuned vector
    return int((best < eps).sum())


def updated_weights(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                    rel_tol: float = 1e-6) -> list[str]:
    """Names of the 2-D weights (not the task head) that fine-tuning changed."""
    names = []
    for name, w in base.items():
        if w.ndim != 2 or name not in tuned or tuned[name].shape != w.shape:
            continue
        if any(h in name for h in NOT_ADAPTED):
            continue
        delta = (tuned[name].double() - w.double()).norm()
        if delta > rel_tol * w.double().norm():
            names.append(name)
    return names


def spectrum(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], k: int = 10,
             eps: tuple[float, ...] = (0.5, 0.7)) -> list[dict]:
    """One row per updated weight: relative update norm, numerical rank of the update,
    the top singular values of W, W' and dW, and intruder counts at each eps."""
    rows = []
    for name in updated_weights(base, tuned):
        w, w2 = base[name].double(), tuned[name].double()
        delta = w2 - w
        s_delta = torch.linalg.svdvals(delta)
        rank = int((s_delta > 1e-6 * s_delta[0]).sum()) if s_delta[0] > 0 else 0
        row = {"name": name, "relative_update": float(delta.norm() / w.norm()), "update_rank": rank,
               "sv_base": torch.linalg.svdvals(w)[:k].tolist(),
               "sv_tuned": torch.linalg.svdvals(w2)[:k].tolist(),
               "sv_update": s_delta[:k].tolist()}
        for e in eps:
            row[f"intruders@{e}"] = intruders(w, w2, k, e)
        rows.append(row)
    return rows


def flips(before: list[int], after: list[int], labels: list[int]) -> dict:
    """Which examples a later stage fixed (wrong -> right) or broke (right -> wrong)."""
    if not len(before) == len(after) == len(labels):
        raise ValueError(f"prediction lists differ in length: {len(before)}, {len(after)}, {len(labels)}")
    fixed = sum(b != y and a == y for b, a, y in zip(before, after, labels))
    broken = sum(b == y and a != y for b, a, y in zip(before, after, labels))
    wrong = sum(b != y for b, y in zip(before, labels))
    right = len(labels) - wrong
    return {"n": len(labels), "before_wrong": wrong, "fixed": fixed, "broken": broken,
            "fix_rate": fixed / wrong if wrong else 0.0, "break_rate": broken / right if right else 0.0,
            "net": fixed - broken, "mcnemar_p": mcnemar(fixed, broken),
            "changed": sum(b != a for b, a in zip(before, after))}
