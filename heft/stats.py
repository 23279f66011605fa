"""The statistics heft reports: intervals for one accuracy, paired tests between two.

* ``wilson_interval``: 95% Wilson score interval of a proportion (sane near 0/1, small n);
* ``discordant``: McNemar's two counts, the examples only one of two models gets right;
* ``mcnemar``: exact two-sided McNemar test on those counts;
* ``paired_seeds``: mean and std of per-seed differences with a paired t-test.

tests/test_stats.py pins each against its reference: statsmodels' ``proportion_confint(method=
"wilson")`` and ``mcnemar(exact=True)``, scipy's ``ttest_rel``.
"""
from __future__ import annotations

import math
import statistics


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sane near 0/1 and for small n)."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 or n correct the centre and half-width are the same number computed two ways, so
    # rounding can leave a bound a few 1e-17 outside [0, 1]
    return max(0.0, centre - half), min(1.0, centre + half)


def discordant(a: list[int], b: list[int], labels: list[int]) -> tuple[int, int]:
    """(examples only ``a`` gets right, examples only ``b`` gets right): McNemar's b and c.
    Examples both get right or both get wrong say nothing about which model is better."""
    if not len(a) == len(b) == len(labels):  # zip would silently pair a prefix
        raise ValueError(f"paired predictions need the same rows: {len(a)} and {len(b)} predictions, "
                         f"{len(labels)} labels")
    right_a = [p == t for p, t in zip(a, labels)]
    right_b = [q == t for q, t in zip(b, labels)]
    return (sum(x and not y for x, y in zip(right_a, right_b)),
            sum(y and not x for x, y in zip(right_a, right_b)))


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar test: under H0 the b+c discordant pairs split 50/50."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_seeds(a: list[float], b: list[float]) -> dict:
    """Mean and std of a - b over seeds, with a paired t-test (two-sided).  With 3 seeds
    the test has 2 degrees of freedom: only large, consistent differences reach p < 0.05."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs one value per seed on both sides: {len(a)} vs {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    out = {"n": len(d), "mean_diff": statistics.fmean(d),
           "std_diff": statistics.stdev(d) if len(d) > 1 else 0.0, "wins": sum(x > 0 for x in d),
           "p": float("nan")}
    if len(d) > 1:
        if out["std_diff"] == 0:
            out["p"] = 1.0 if out["mean_diff"] == 0 else 0.0
        else:
            from scipy import stats  # installed with mlflow; only needed here
            out["p"] = float(stats.ttest_rel(a, b).pvalue)
    return out
