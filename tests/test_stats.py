"""moras_interp.eval.stats against scipy / numpy references: Wilson intervals, AUROC, cross-validated
separability, the shuffled-label baseline and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is in the dev extra (reference for these tests)")

from moras_interp.activations.separability import fisher_discriminant_ratio  # noqa: E402
from moras_interp.eval.stats import (  # noqa: E402
    Rate,
    cv_separability,
    fisher_direction,
    paired_bootstrap_diff,
    rate_of,
    shuffled_baseline,
    stratified_folds,
    wilson_interval,
)


@pytest.mark.parametrize(("k", "n"), [(0, 20), (4, 20), (20, 20), (1, 1), (37, 200), (199, 200), (5, 7)])
@pytest.mark.parametrize("conf", [0.95, 0.9])
def test_wilson_interval_equals_scipy(k: int, n: int, conf: float) -> None:
    ref = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    lo, hi = wilson_interval(k, n, conf)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_the_issue_example_and_rate_formatting() -> None:
    r = rate_of([True] * 4 + [False] * 16)
    assert (r.k, r.n) == (4, 20) and r.fmt() == "0.20 [0.08, 0.42] (4/20)"
    assert Rate(0, 0).fmt() == "— (0/0)" and np.isnan(Rate(0, 0).lo)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="booleans"):
        rate_of([0.5, 1.0])


def test_wilson_coverage_is_near_nominal() -> None:
    rng = np.random.default_rng(0)
    for p, n in ((0.05, 40), (0.5, 20), (0.9, 200)):
        ks = rng.binomial(n, p, size=1000)
        cover = np.mean([wilson_interval(int(k), n)[0] <= p <= wilson_interval(int(k), n)[1] for k in ks])
        assert cover > 0.92, (p, n, cover)


def test_folds_are_disjoint_cover_and_stratified() -> None:
    y = np.array([True] * 23 + [False] * 17)
    folds = stratified_folds(y, 5, seed=3)
    allidx = np.concatenate(folds)
    assert sorted(allidx.tolist()) == list(range(40))
    for f in folds:
        assert abs(int(y[f].sum()) - 23 / 5) < 1 and abs(int((~y[f]).sum()) - 17 / 5) < 1
    with pytest.raises(ValueError, match="per class"):
        stratified_folds([True, True, False], 5)


def test_fisher_direction_realises_the_fdr() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 6, generator=g, dtype=torch.float64) + 0.7, torch.randn(25, 6, generator=g, dtype=torch.float64)
    w = fisher_direction(a, b, eps=1e-3)
    ref = np.linalg.solve(np.cov(a.numpy().T) + np.cov(b.numpy().T) + 1e-3 * np.eye(6), (a.mean(0) - b.mean(0)).numpy())
    np.testing.assert_allclose(w, ref, rtol=1e-9)
    # the FDR is the quadratic form δᵀ w
    assert float((a.mean(0) - b.mean(0)).numpy() @ w) == pytest.approx(fisher_discriminant_ratio(a, b, 1e-3), rel=1e-9)


def _reference_cv(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray], eps: float) -> tuple[float, float]:
    aucs, fdrs = [], []
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        a, b = x[train][y[train]], x[train][~y[train]]
        w = np.linalg.solve(np.cov(a.T) + np.cov(b.T) + eps * np.eye(x.shape[1]), a.mean(0) - b.mean(0))
        s = x[test] @ w
        pos, neg = s[y[test]], s[~y[test]]
        aucs.append(scipy_stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
        fdrs.append((pos.mean() - neg.mean()) ** 2 / (pos.var(ddof=1) + neg.var(ddof=1)))
    return float(np.mean(aucs)), float(np.mean(fdrs))


def test_cv_separability_equals_numpy_scipy_reference() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(120) < 0.5
    x = rng.normal(size=(120, 10)) + 0.6 * y[:, None] * (np.arange(10) < 3)
    cv = cv_separability(x, y, folds=5, seed=7)
    auc, fdr = _reference_cv(x, y, stratified_folds(y, 5, seed=7), 1e-3)
    assert cv.auroc == pytest.approx(auc, abs=1e-12) and cv.fdr == pytest.approx(fdr, rel=1e-9)
    assert cv.auroc > 0.75


def test_in_sample_fdr_is_inflated_held_out_is_at_chance() -> None:
    """Pure noise in d close to n: the in-sample FDR is large, the held-out metrics sit at chance."""
    rng = np.random.default_rng(2)
    y = np.repeat([True, False], 60)
    x = rng.normal(size=(120, 40))
    in_sample = fisher_discriminant_ratio(torch.tensor(x[y]), torch.tensor(x[~y]), 1e-3)
    cv = cv_separability(x, y, folds=5, seed=0)
    sh = shuffled_baseline(x, y, n_shuffles=30, seed=0, observed=cv)
    assert in_sample > 1.0
    assert abs(cv.auroc - 0.5) < 0.12 and abs(sh.auroc_mean - 0.5) < 0.05
    assert sh.p_auroc > 0.05


def test_shuffled_baseline_matches_scipy_permutation_test() -> None:
    """Same null distribution as scipy.stats.permutation_test over label pairings (same statistic), and the
    observed signal is rejected at the smallest attainable p."""
    rng = np.random.default_rng(4)
    y = np.repeat([True, False], 45)
    x = rng.normal(size=(90, 4)) + 2.0 * y[:, None] * np.array([1.0, 0, 0, 0])
    obs = cv_separability(x, y, folds=3, seed=0)
    ours = shuffled_baseline(x, y, n_shuffles=40, folds=3, seed=0, observed=obs)
    ref = scipy_stats.permutation_test((y,), lambda lab: cv_separability(x, lab, folds=3, seed=0).auroc,
                                       permutation_type="pairings", n_resamples=40, alternative="greater",
                                       random_state=11)
    assert ours.p_auroc == pytest.approx(1 / 41) and ref.pvalue == pytest.approx(1 / 41)
    assert ref.statistic == pytest.approx(obs.auroc)
    assert abs(ours.auroc_mean - float(np.mean(ref.null_distribution))) < 0.06


def test_paired_bootstrap_diff_against_normal_approximation() -> None:
    rng = np.random.default_rng(5)
    a = rng.random(2000) < 0.3
    b = np.where(rng.random(2000) < 0.8, a, rng.random(2000) < 0.5)
    d = paired_bootstrap_diff(a, b, n_boot=3000, seed=1)
    diff = a.astype(float) - b.astype(float)
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    assert d.estimate == pytest.approx(diff.mean())
    assert d.lo == pytest.approx(diff.mean() - 1.96 * se, abs=0.006)
    assert d.hi == pytest.approx(diff.mean() + 1.96 * se, abs=0.006)
    assert d.agreement == pytest.approx(float((a == b).mean()))
    same = paired_bootstrap_diff(a, a)
    assert (same.estimate, same.lo, same.hi, same.agreement) == (0.0, 0.0, 0.0, 1.0)
