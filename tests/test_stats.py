"""The numbers users read, pinned against their references: Wilson intervals against
statsmodels' proportion_confint, McNemar's counts against a hand count and its p against
statsmodels' exact test, the seed-paired t against scipy's ttest_rel."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import pytest
from scipy.stats import norm, ttest_rel
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from heft.stats import discordant, mcnemar, paired_seeds, wilson_interval
from study import tables

# statsmodels takes alpha, heft takes z = 1.96: this alpha gives statsmodels the same z
ALPHA_OF_Z196 = 2 * norm.sf(1.96)
TABLE = [(0, 1), (1, 1), (0, 10), (10, 10), (3, 7), (50, 100), (1, 30), (29, 30), (0, 3270), (3270, 3270),
         (2033, 3270)]


@pytest.mark.parametrize("k,n", TABLE)
def test_wilson_interval_equals_statsmodels_including_none_and_all_correct(k, n):
    ours = wilson_interval(k, n)
    assert ours == pytest.approx(proportion_confint(k, n, alpha=ALPHA_OF_Z196, method="wilson"),
                                 rel=0, abs=1e-12)
    # and statsmodels' own 95% (z = 1.959964...) agrees to the 4 decimals a report prints
    assert ours == pytest.approx(proportion_confint(k, n, alpha=0.05, method="wilson"), rel=0, abs=1e-4)
    assert 0.0 <= ours[0] <= k / n <= ours[1] <= 1.0


def test_wilson_interval_reference_value():
    assert tuple(round(x, 4) for x in wilson_interval(50, 100)) == (0.4038, 0.5962)
    assert tuple(round(x, 4) for x in wilson_interval(2033, 3270)) == (0.6050, 0.6382)  # BoolQ dev majority


def test_mcnemar_equals_statsmodels_exact():
    for b in range(13):
        for c in range(13):
            ref = sm_mcnemar([[7, b], [c, 4]], exact=True).pvalue
            assert mcnemar(b, c) == pytest.approx(ref, rel=1e-12, abs=1e-15), (b, c)


# 30 rows; which rows each model answers right is laid out by hand, so the counts are known
LABELS = [1, 0, 1] * 10


def answers(right: set[int]) -> list[int]:
    return [t if i in right else 1 - t for i, t in enumerate(LABELS)]


# equal accuracy (15/30 each), different answers: both right on 10-14, only a on 0-9, only b on 15-24
EQUAL_A, EQUAL_B = answers(set(range(15))), answers(set(range(10, 25)))
# lopsided: a right on 0-16 (17), b right on 12-17 (6): both 12-16, only a 0-11 (12), only b 17 (1)
LOPSIDED_A, LOPSIDED_B = answers(set(range(17))), answers(set(range(12, 18)))


def statsmodels_p(a: list[int], b: list[int]) -> float:
    """statsmodels on the full 2x2 table (right/wrong of a by right/wrong of b)."""
    cells = [[0, 0], [0, 0]]
    for p, q, t in zip(a, b, LABELS):
        cells[p != t][q != t] += 1
    return sm_mcnemar(cells, exact=True).pvalue


def test_discordant_counts_equal_a_hand_count_and_p_equals_statsmodels():
    assert discordant(EQUAL_A, EQUAL_B, LABELS) == (10, 10)
    assert mcnemar(10, 10) == 1.0 == statsmodels_p(EQUAL_A, EQUAL_B)
    assert discordant(LOPSIDED_A, LOPSIDED_B, LABELS) == (12, 1)
    assert discordant(LOPSIDED_B, LOPSIDED_A, LABELS) == (1, 12)
    assert mcnemar(12, 1) == pytest.approx(statsmodels_p(LOPSIDED_A, LOPSIDED_B), rel=1e-12)
    assert mcnemar(12, 1) == pytest.approx(28 / 2 ** 13)  # 2 * P(X <= 1), X ~ Binomial(13, 1/2)
    with pytest.raises(ValueError, match="same rows"):
        discordant(EQUAL_A, EQUAL_B[:-1], LABELS)


@dataclass
class FakeCell:
    label: str
    seed: int
    method: str = "heft"


class Fake:  # what tables.compare reads of a finished cell
    def __init__(self, label: str, seed: int, preds: list[int]):
        self.cell, self.preds = FakeCell(label, seed), preds
        self.accuracy = sum(p == t for p, t in zip(preds, LABELS)) / len(LABELS)

    def predictions(self, evaluation=None):
        return self.preds, LABELS


def test_study_comparisons_count_discordant_pairs_pooled_over_seeds():
    """tables.compare on constructed cells: the counts a results table prints, and its verdict."""
    a = [Fake("A", 0, LOPSIDED_A), Fake("A", 1, EQUAL_A)]
    b = [Fake("B", 0, LOPSIDED_B), Fake("B", 1, EQUAL_B)]
    (cmp,) = tables.comparisons(a + b, (("A", "B", "is A better?"),))
    assert (cmp["only_a_right"], cmp["only_b_right"]) == (12 + 10, 1 + 10)
    assert cmp["mcnemar_p"] == pytest.approx(sm_mcnemar([[0, 22], [11, 0]], exact=True).pvalue, rel=1e-12)
    assert cmp["mcnemar_p"] > 0.05 and cmp["verdict"] == "no significant difference"
    (tie,) = tables.comparisons([Fake("A", 0, EQUAL_A), Fake("B", 0, EQUAL_B)], (("A", "B", "?"),))
    assert (tie["only_a_right"], tie["only_b_right"], tie["mcnemar_p"]) == (10, 10, 1.0)
    (win,) = tables.comparisons([Fake("A", 0, LOPSIDED_A), Fake("B", 0, LOPSIDED_B)], (("A", "B", "?"),))
    assert (win["only_a_right"], win["only_b_right"]) == (12, 1)
    assert win["mcnemar_p"] < 0.01 and win["verdict"].startswith("higher (significant")


@pytest.mark.parametrize("a,b", [([66.0, 64.5, 67.2], [62.2, 63.0, 62.9]),
                                 ([70.1, 61.0, 64.4, 69.9], [70.0, 62.5, 60.1, 66.3])])
def test_paired_seeds_equals_scipy_ttest_rel(a, b):
    out = paired_seeds(a, b)
    d = [x - y for x, y in zip(a, b)]
    assert out["p"] == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-12)
    assert out["mean_diff"] == pytest.approx(sum(d) / len(d))
    assert out["std_diff"] == pytest.approx(statistics.stdev(d))
    assert out["n"] == len(a) and out["wins"] == sum(x > 0 for x in d)


def test_paired_seeds_reference_value():
    """Differences 2, 1, 2: mean 5/3, sd sqrt(1/3), t = 5 on 2 degrees of freedom, where the
    two-sided p has a closed form, 1 - t / sqrt(2 + t^2) = 1 - 5 / sqrt(27)."""
    out = paired_seeds([3.0, 2.0, 1.0], [1.0, 1.0, -1.0])
    assert out["mean_diff"] == pytest.approx(5 / 3) and out["std_diff"] == pytest.approx(3 ** -0.5)
    assert out["p"] == pytest.approx(1 - 5 / 27 ** 0.5, rel=1e-9)  # 0.0377
