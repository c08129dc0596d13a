"""Statistics for reported numbers: rates with Wilson intervals, paired bootstrap differences, and
cross-validated (held-out) separability with a shuffled-label baseline.

    r = rate_of(refused)                       # Rate(k, n): r.rate, r.lo, r.hi (Wilson 95 %), r.fmt()
    d = paired_bootstrap_diff(a, b)            # difference of two rates on the same examples, with a 95 % CI
    cv = cv_separability(x, y, folds=5)        # held-out AUROC / FDR of a Fisher direction fit on the other folds
    sh = shuffled_baseline(x, y, n_shuffles=20)  # the same with permuted labels (chance level + p-value)

Intervals are **Wilson score** intervals (Wilson 1927), which keep their coverage at small n and at rates
near 0 or 1, where the normal ("Wald") interval collapses to a point; they equal
``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from moras_interp.eval.metrics import risk_auroc


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n; (nan, nan) when n = 0."""
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}.")
    if n == 0:
        return math.nan, math.nan
    z, p = _z(confidence), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """k successes out of n, with its Wilson interval at ``confidence``."""

    k: int
    n: int
    confidence: float = 0.95

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n, self.confidence)

    @property
    def lo(self) -> float:
        return self.interval[0]

    @property
    def hi(self) -> float:
        return self.interval[1]

    def fmt(self, digits: int = 2) -> str:
        """``"0.20 [0.08, 0.42] (4/20)"``."""
        if not self.n:
            return "— (0/0)"
        return f"{self.rate:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}] ({self.k}/{self.n})"

    def contains(self, value: float) -> bool:
        return self.lo <= value <= self.hi


def rate_of(flags: Sequence[bool] | np.ndarray, confidence: float = 0.95) -> Rate:
    """A :class:`Rate` from booleans (e.g. refused / not)."""
    a = np.asarray(flags)
    if a.ndim != 1 or (a.size and a.dtype != bool and not np.isin(a, (0, 1)).all()):
        raise ValueError("rate_of needs a 1-D sequence of booleans (or 0/1).")
    return Rate(int(a.astype(bool).sum()), int(a.size), confidence)


@dataclass(frozen=True)
class Diff:
    """Difference of two rates on the same examples (a − b) with a percentile-bootstrap interval."""

    estimate: float
    lo: float
    hi: float
    n: int
    agreement: float  # fraction of examples where a and b agree

    def fmt(self, digits: int = 2) -> str:
        return f"{self.estimate:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}] (n={self.n})"


def paired_bootstrap_diff(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray, *, n_boot: int = 4000,
                          confidence: float = 0.95, seed: int = 0) -> Diff:
    """Rate(a) − rate(b) for paired outcomes (same examples), with a percentile bootstrap over examples."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired_bootstrap_diff needs two equal-length 1-D outcome lists, got {x.shape} and {y.shape}.")
    d = x - y
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    boots = d[idx].mean(1)
    q = (1 - confidence) / 2
    return Diff(float(d.mean()), float(np.quantile(boots, q)), float(np.quantile(boots, 1 - q)), int(d.size),
                float((x == y).mean()))


def stratified_folds(labels: Sequence[bool] | np.ndarray, folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Held-out index sets: each class shuffled and dealt round-robin into ``folds`` disjoint folds."""
    y = np.asarray(labels, dtype=bool)
    if folds < 2 or min(int(y.sum()), int((~y).sum())) < folds:
        raise ValueError(f"stratified_folds needs folds >= 2 and at least {folds} examples per class; "
                         f"got {int(y.sum())} positive / {int((~y).sum())} negative.")
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in range(folds)]
    for cls in (True, False):
        members = rng.permutation(np.flatnonzero(y == cls))
        for i, j in enumerate(members):
            out[i % folds].append(int(j))
    return [np.sort(np.asarray(f)) for f in out]


def fisher_direction(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """w = (Σ_a + Σ_b + εI)⁻¹ (μ_a − μ_b) for a [n_a, d], b [n_b, d] (float64 [d]); δᵀw is the FDR of
    :func:`moras_interp.activations.separability.fisher_discriminant_ratio` (same ε, unbiased covariances)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    s = np.atleast_2d(np.cov(a.T)) + np.atleast_2d(np.cov(b.T))
    return np.linalg.solve(s + eps * np.eye(a.shape[1]), a.mean(0) - b.mean(0))


@dataclass(frozen=True)
class CVSeparability:
    """Held-out separability: mean over folds of the AUROC and the 1-D Fisher ratio of held-out projections."""

    auroc: float
    fdr: float
    fold_auroc: tuple[float, ...]
    fold_fdr: tuple[float, ...]


def cv_separability(x: torch.Tensor | np.ndarray, labels: Sequence[bool] | np.ndarray, *, folds: int = 5,
                    seed: int = 0, eps: float = 1e-3) -> CVSeparability:
    """For each fold: fit :func:`fisher_direction` on the other folds, project the held-out fold, and score it
    (AUROC of positives vs negatives, and (m_a − m_b)² / (v_a + v_b) of the projections). x: [n, d]."""
    xt = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if xt.ndim != 2 or xt.shape[0] != y.size:
        raise ValueError(f"cv_separability needs x [n, d] and n labels; got {tuple(xt.shape)} and {y.size}.")
    if not np.isfinite(xt).all():
        raise ValueError("cv_separability: x contains NaN/Inf.")
    aucs, fdrs = [], []
    for test in stratified_folds(y, folds, seed):
        train = np.setdiff1d(np.arange(y.size), test)
        ytr, yte = y[train], y[test]
        w = fisher_direction(xt[train][ytr], xt[train][~ytr], eps)
        s = xt[test] @ w
        aucs.append(risk_auroc(s, yte))
        pa, pb = s[yte], s[~yte]
        fdrs.append(float((pa.mean() - pb.mean()) ** 2 / (pa.var(ddof=1) + pb.var(ddof=1))))
    return CVSeparability(float(np.mean(aucs)), float(np.mean(fdrs)), tuple(aucs), tuple(fdrs))


@dataclass(frozen=True)
class ShuffledBaseline:
    """Cross-validated metrics under permuted labels: their mean, 95th percentile and permutation p-values."""

    auroc_mean: float
    auroc_q95: float
    fdr_mean: float
    fdr_q95: float
    p_auroc: float
    p_fdr: float
    n_shuffles: int


def shuffled_baseline(x: torch.Tensor | np.ndarray, labels: Sequence[bool] | np.ndarray, *, n_shuffles: int = 20,
                      folds: int = 5, seed: int = 0, eps: float = 1e-3,
                      observed: CVSeparability | None = None) -> ShuffledBaseline:
    """:func:`cv_separability` with the labels permuted ``n_shuffles`` times (chance level of the held-out
    metrics); p = (1 + #{shuffled ≥ observed}) / (1 + n_shuffles)."""
    y = np.asarray(labels, dtype=bool)
    obs = observed or cv_separability(x, y, folds=folds, seed=seed, eps=eps)
    rng = np.random.default_rng(seed + 1)
    res = [cv_separability(x, rng.permutation(y), folds=folds, seed=seed, eps=eps) for _ in range(n_shuffles)]
    a, f = np.asarray([r.auroc for r in res]), np.asarray([r.fdr for r in res])
    return ShuffledBaseline(float(a.mean()), float(np.quantile(a, 0.95)), float(f.mean()), float(np.quantile(f, 0.95)),
                            float((1 + (a >= obs.auroc).sum()) / (1 + n_shuffles)),
                            float((1 + (f >= obs.fdr).sum()) / (1 + n_shuffles)), n_shuffles)


__all__ = ["CVSeparability", "Diff", "Rate", "ShuffledBaseline", "cv_separability", "fisher_direction",
           "paired_bootstrap_diff", "rate_of", "shuffled_baseline", "stratified_folds", "wilson_interval"]
