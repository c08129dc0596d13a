"""FDR and AUROC against independent numpy references on synthetic Gaussians."""

import itertools

import numpy as np
import pytest
import torch

from moras_interp.activations.separability import (
    auroc,
    average_ranks,
    fdr_per_layer,
    fisher_discriminant_ratio,
    projection_auroc,
    separability_figure,
    separability_panel,
    split_auroc_per_layer,
)


def fdr_reference(a: np.ndarray, b: np.ndarray, eps: float, ddof: int = 1) -> float:
    """Independent reference: explicit inverse of the small regularised matrix (fine for a test)."""
    delta = a.mean(0) - b.mean(0)
    s = np.atleast_2d(np.cov(a, rowvar=False, ddof=ddof)) + np.atleast_2d(np.cov(b, rowvar=False, ddof=ddof))
    s = s + eps * np.eye(a.shape[1])
    return float(delta @ np.linalg.inv(s) @ delta)


def gaussians(n_a: int, n_b: int, d: int, shift: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_a, d))
    a[:, 0] += shift
    b = rng.standard_normal((n_b, d))
    return torch.tensor(a), torch.tensor(b)


def test_fdr_known_answer_identity_covariance():
    a, b = gaussians(20000, 20000, 4, shift=2.0)
    eps = 1e-3
    got = fisher_discriminant_ratio(a, b, eps)
    assert got == pytest.approx(4.0 / (2 + eps), rel=0.03)
    assert got == pytest.approx(fdr_reference(a.numpy(), b.numpy(), eps), rel=1e-10)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("shape", [(30, 40, 5), (8, 11, 60), (3, 2, 200)])
def test_fdr_matches_numpy_reference_both_paths(shape, ddof):
    n_a, n_b, d = shape
    a, b = gaussians(n_a, n_b, d, shift=0.7, seed=d)
    ref = fdr_reference(a.numpy(), b.numpy(), 1e-2, ddof=ddof)
    direct = fisher_discriminant_ratio(a, b, 1e-2, ddof=ddof, method="direct")
    wood = fisher_discriminant_ratio(a, b, 1e-2, ddof=ddof, method="woodbury")
    auto = fisher_discriminant_ratio(a, b, 1e-2, ddof=ddof)
    assert direct == pytest.approx(ref, rel=1e-8)
    assert wood == pytest.approx(ref, rel=1e-8)
    assert auto == pytest.approx(ref, rel=1e-8)


def test_fdr_d_greater_than_n_is_finite_and_float32_input_ok():
    a, b = gaussians(6, 7, 500, shift=1.0, seed=3)
    got = fisher_discriminant_ratio(a.float(), b.float())
    assert np.isfinite(got) and got > 0
    assert got == pytest.approx(fdr_reference(a.float().double().numpy(), b.float().double().numpy(), 1e-3), rel=1e-6)
    assert np.isfinite(fisher_discriminant_ratio(a.bfloat16(), b.bfloat16()))


def test_fdr_per_layer_matches_single_calls():
    acts_a = torch.randn(3, 12, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    acts_b = torch.randn(3, 9, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    acts_a[1] += 1.0
    out = fdr_per_layer(acts_a, acts_b, eps=1e-2)
    assert out.shape == (3,) and out.dtype == torch.float64
    for l in range(3):
        assert out[l].item() == pytest.approx(fdr_reference(acts_a[l].numpy(), acts_b[l].numpy(), 1e-2), rel=1e-8)
    assert out[1] > out[0] and out[1] > out[2]


def test_fdr_errors():
    a, b = gaussians(5, 5, 3, 1.0)
    with pytest.raises(ValueError, match="class b has 0 examples: FDR needs at least 2 per class"):
        fisher_discriminant_ratio(a, b[:0])
    with pytest.raises(ValueError, match="class a has 1 examples"):
        fisher_discriminant_ratio(a[:1], b)
    with pytest.raises(ValueError, match="feature size mismatch"):
        fisher_discriminant_ratio(a, b[:, :2])
    bad = a.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf at class a\[2, 1\].*use float32"):
        fisher_discriminant_ratio(bad, b)
    with pytest.raises(ValueError, match="eps must be > 0"):
        fisher_discriminant_ratio(a, b, eps=0)
    with pytest.raises(ValueError, match="layer count mismatch"):
        fdr_per_layer(a[None].expand(2, -1, -1), b[None])
    inf = a[None].clone().float()
    inf[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN/Inf at class a \[layer, example, feature\]\[0, 0, 0\]"):
        fdr_per_layer(inf, b[None].float())


def brute_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=40).astype(float)            # many ties
    labels = rng.random(40) < 0.4
    labels[0], labels[1] = True, False
    assert auroc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


def test_auroc_extremes_and_errors():
    s = torch.tensor([0.1, 0.2, 0.8, 0.9])
    assert auroc(s, torch.tensor([False, False, True, True])) == 1.0
    assert auroc(s, torch.tensor([True, True, False, False])) == 0.0
    assert auroc(torch.ones(4), torch.tensor([True, False, True, False])) == 0.5
    with pytest.raises(ValueError, match="needs both classes"):
        auroc(s, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ in length"):
        auroc(s, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN/Inf"):
        auroc(torch.tensor([0.0, float("nan")]), torch.tensor([True, False]))


def test_average_ranks():
    r = average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0]))
    assert r.tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_projection_auroc_default_direction_and_explicit():
    a, b = gaussians(200, 200, 10, shift=3.0, seed=5)
    tr_a, te_a, tr_b, te_b = a[:100], a[100:], b[:100], b[100:]
    got = projection_auroc(tr_a, tr_b, te_a, te_b)
    direction = (tr_a.mean(0) - tr_b.mean(0)).numpy()
    scores = np.concatenate([te_a.numpy() @ direction, te_b.numpy() @ direction])
    labels = np.array([True] * 100 + [False] * 100)
    assert got == pytest.approx(brute_auroc(scores, labels), abs=1e-12)
    assert got > 0.95
    e0 = torch.zeros(10, dtype=torch.float64)
    e0[0] = -1.0
    assert projection_auroc(tr_a, tr_b, te_a, te_b, direction=e0) < 0.05


def test_split_auroc_per_layer():
    g = torch.Generator().manual_seed(0)
    acts_a, acts_b = torch.randn(2, 60, 16, generator=g), torch.randn(2, 50, 16, generator=g)
    acts_a[0, :, 3] += 4.0                                       # layer 0 separable, layer 1 noise
    out = split_auroc_per_layer(acts_a, acts_b, test_fraction=0.3, seed=0)
    assert out.shape == (2,)
    assert out[0] > 0.97
    assert 0.2 < out[1] < 0.8
    assert torch.equal(out, split_auroc_per_layer(acts_a, acts_b, test_fraction=0.3, seed=0))
    with pytest.raises(ValueError, match="test_fraction"):
        split_auroc_per_layer(acts_a, acts_b, test_fraction=1.0)
    with pytest.raises(ValueError, match="class b has 1 examples"):
        split_auroc_per_layer(acts_a, acts_b[:, :1])


def test_figures():
    curves = {"plain": torch.tensor([0.1, 0.5, 2.0]), "reformulated": torch.tensor([0.2, 1.5, 4.0])}
    fig = separability_figure(curves, metric="FDR", title="t")
    assert len(fig.data) == 2 and fig.data[1].name == "reformulated" and list(fig.data[0].x) == [0, 1, 2]
    fig = separability_figure(curves, layers=[4, 8, 12], log_y=True)
    assert list(fig.data[0].x) == [4, 8, 12]
    aucs = {"plain": torch.tensor([0.5, 0.7, 0.9]), "reformulated": torch.tensor([0.6, 0.8, 0.99])}
    panel = separability_panel(curves, aucs)
    assert len(panel.data) == 4
    assert sum(bool(t.showlegend) for t in panel.data) == 2
    with pytest.raises(ValueError, match="3 values but 2 layers"):
        separability_figure(curves, layers=[0, 1])


def test_auto_uses_low_rank_path_when_d_exceeds_n(monkeypatch):
    calls = []
    real_qr = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda x, *a, **k: calls.append(tuple(x.shape)) or real_qr(x, *a, **k))
    a, b = gaussians(5, 6, 2000, shift=0.5, seed=1)
    fisher_discriminant_ratio(a, b)
    assert calls == [(2000, 11)]
    calls.clear()
    a, b = gaussians(50, 60, 20, shift=0.5, seed=1)
    fisher_discriminant_ratio(a, b)
    assert calls == []


def test_low_rank_path_stable_when_shift_lies_in_the_data_span():
    g = torch.Generator().manual_seed(0)
    a = 100 * torch.randn(20, 300, generator=g, dtype=torch.float64)
    b = torch.cat([a[:10] - a[10:20].mean(0), a[10:20]])               # δ is a combination of the rows
    for eps in (1e-6, 1e-3, 1.0):
        direct = fisher_discriminant_ratio(a, b, eps, method="direct")
        assert fisher_discriminant_ratio(a, b, eps, method="woodbury") == pytest.approx(direct, rel=1e-9)
