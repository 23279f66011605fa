"""Intruder dimensions, flips and paired statistics on constructed inputs with known
answers; the passage-match task built from the shared BoolQ file."""
import json
import math

import pytest
import torch

from heft.data.sources import validate_rows
from heft.stats import mcnemar, paired_seeds
from study.derived import passage_match, write_derived_task
from heft.grids.diagnostics import flips, intruders, spectrum, updated_weights


def spectrum_matrix(n=64, seed=0):
    """W = Q1 diag(10..1) Q2^T: distinct singular values, so its singular vectors are unique."""
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q1 @ torch.diag(torch.linspace(10, 1, n, dtype=torch.float64)) @ q2.T


def test_a_large_rank_one_update_in_a_new_direction_is_one_intruder():
    w = spectrum_matrix()
    g = torch.Generator().manual_seed(1)
    u = torch.randn(64, 1, generator=g, dtype=torch.float64)
    v = torch.randn(64, 1, generator=g, dtype=torch.float64)
    u, v = u / u.norm(), v / v.norm()
    # a random direction has max |cos| ~ 0.3-0.4 with the 64 base directions: below 0.5
    assert intruders(w, w + 30 * u @ v.T, k=10, eps=0.5) == 1
    assert intruders(w, w + 1e-3 * u @ v.T, k=10, eps=0.5) == 0   # a tiny update keeps the basis
    assert intruders(w, w, k=10, eps=0.99) == 0                   # identical: every cos is 1


def test_spectrum_finds_only_the_updated_non_head_weights():
    w = spectrum_matrix()
    base = {"layer.0.q.weight": w, "layer.0.k.weight": w.clone(), "classifier.weight": w.clone(),
            "layer.0.q.bias": torch.zeros(64, dtype=torch.float64)}
    delta = torch.zeros(64, 64, dtype=torch.float64)
    delta[:, :2] = 5.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tuned = dict(base, **{"layer.0.q.weight": w + delta, "classifier.weight": w + 1.0})
    assert updated_weights(base, tuned) == ["layer.0.q.weight"]
    (row,) = spectrum(base, tuned, k=10)
    assert row["update_rank"] == 2
    assert row["relative_update"] == pytest.approx(float(delta.norm() / w.norm()))
    assert row["intruders@0.5"] <= row["intruders@0.7"] <= 10
    assert len(row["sv_tuned"]) == 10 and row["sv_base"][0] == pytest.approx(10.0)


def test_flips_count_fixed_and_broken_examples():
    labels = [1, 1, 0, 0, 1, 0]
    before = [1, 0, 0, 1, 0, 0]   # wrong on 1, 3, 4
    after = [0, 1, 0, 0, 0, 0]    # fixes 1 and 3, breaks 0
    f = flips(before, after, labels)
    assert (f["fixed"], f["broken"], f["before_wrong"], f["net"], f["changed"]) == (2, 1, 3, 1, 3)
    assert f["fix_rate"] == pytest.approx(2 / 3) and f["break_rate"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="differ in length"):
        flips([1], [1, 0], [1, 0])


def test_mcnemar_exact_values():
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(0, 6) == pytest.approx(2 / 64)            # all 6 discordant pairs one way
    assert mcnemar(3, 3) == 1.0
    assert mcnemar(10, 2) == pytest.approx(2 * sum(math.comb(12, i) for i in range(3)) / 2 ** 12)


def test_paired_seeds_uses_the_differences():
    out = paired_seeds([70.0, 71.0, 72.0], [69.0, 69.5, 70.0])
    assert out["mean_diff"] == pytest.approx(1.5) and out["wins"] == 3
    assert 0 < out["p"] < 0.05
    assert paired_seeds([1.0, 2.0], [1.0, 2.0])["p"] == 1.0
    with pytest.raises(ValueError, match="one value per seed"):
        paired_seeds([1.0], [1.0, 2.0])


def test_passage_match_is_balanced_deterministic_and_mismatches_articles(boolq_validation, tmp_path):
    path = write_derived_task("passage-match", str(boolq_validation), str(tmp_path / "pm.jsonl"), seed=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    source = [json.loads(line) for line in boolq_validation.read_text().splitlines()]
    assert len(rows) == len(source) == 3270
    assert 0.45 < sum(r["label"] for r in rows) / len(rows) < 0.55
    assert len(validate_rows(rows, str(path), "passage")) == 3270  # the loader takes it as it is
    for r, s in zip(rows, source):
        assert r["question"] == s["question"]
        assert (r["passage"] == s["passage"]) == bool(r["label"])  # negatives come from another article
    again = write_derived_task("passage-match", str(boolq_validation), str(tmp_path / "pm2.jsonl"), seed=0)
    assert again.read_bytes() == path.read_bytes()
    assert passage_match(source[:50], seed=1) != passage_match(source[:50], seed=0)
