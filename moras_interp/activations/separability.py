"""Separability of two classes of activations, per layer: Fisher discriminant ratio and AUROC.

    fdr = fdr_per_layer(acts_safe, acts_unsafe)              # acts_*: [L, n, d] -> [L]
    auc = split_auroc_per_layer(acts_safe, acts_unsafe)      # held-out AUROC of the mean-difference projection
    separability_panel({"plain": fdr, "reformulated": fdr2}, {"plain": auc, "reformulated": auc2}).show()

FDR(l) = (μ_a − μ_b)ᵀ (Σ_a + Σ_b + εI)⁻¹ (μ_a − μ_b), as in the MoRAS paper's analysis. Everything is
computed in float64 by solving linear systems (Cholesky), never by forming an inverse. When d exceeds
n_a + n_b the covariances are singular (εI regularises) and the Woodbury identity reduces the cost from
O(d³) to O((n_a + n_b)² d).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    import plotly.graph_objects as go

FdrMethod = Literal["auto", "direct", "woodbury"]


def _check_finite(x: torch.Tensor, what: str) -> None:
    """Raise a ValueError pointing at the first NaN/Inf entry of ``x`` (``what`` names the tensor)."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"activations contain NaN/Inf at {what}[{', '.join(map(str, idx))}] "
                         f"(dtype {x.dtype}): check dtype overflow (use float32) or the input.")


def _check_pair(a: torch.Tensor, b: torch.Tensor, ndim: int, min_n: int, purpose: str) -> None:
    """Validate two class tensors [..., n, d] with matching leading dims and feature size."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"class {name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != ndim:
            want = "[n, d]" if ndim == 2 else "[L, n, d]"
            raise ValueError(f"class {name} must be {want}, got shape {tuple(x.shape)}.")
        if x.shape[-2] < min_n:
            raise ValueError(f"class {name} has {x.shape[-2]} examples: {purpose} needs at least {min_n} per class.")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"feature size mismatch: class a has d={a.shape[-1]}, class b has d={b.shape[-1]}.")
    if ndim == 3 and a.shape[0] != b.shape[0]:
        raise ValueError(f"layer count mismatch: class a has L={a.shape[0]}, class b has L={b.shape[0]}.")


def _quad_form_spd(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """vᵀ M⁻¹ v for symmetric positive definite M [k, k] and v [k], via Cholesky (solve as fallback)."""
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) == 0:
        y = torch.linalg.solve_triangular(chol, v[:, None], upper=False)
        return (y * y).sum()
    return v @ torch.linalg.solve(m, v)


def fisher_discriminant_ratio(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-3, *, ddof: int = 1,
                              method: FdrMethod = "auto") -> float:
    """(μ_a − μ_b)ᵀ (Σ_a + Σ_b + εI)⁻¹ (μ_a − μ_b) for a [n_a, d] and b [n_b, d].

    Σ is the sample covariance with ``ddof`` degrees of freedom removed (default 1: the unbiased n − 1
    estimator; ``ddof=0`` gives the maximum-likelihood 1/n one). ``method="direct"`` solves the d×d system
    (O(d³)); ``"woodbury"`` uses the low-rank structure Σ_a + Σ_b = UᵀU, U the stacked, scaled, centred
    examples [m = n_a + n_b, d]: with the thin QR Uᵀ = QR, δ = Qz + δ⊥ and
    δᵀ(εI + UᵀU)⁻¹δ = ‖δ⊥‖²/ε + zᵀ(εI + RRᵀ)⁻¹z (the Woodbury identity, written without its
    cancelling subtraction), O(m² d). ``"auto"`` picks it when d > m. Computed in float64.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (it regularises singular covariances), got {eps}.")
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0, got {ddof}.")
    _check_pair(a, b, 2, ddof + 1, "FDR")
    _check_finite(a, "class a")
    _check_finite(b, "class b")
    a64, b64 = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    delta = mu_a - mu_b
    # Σ_a + Σ_b = UᵀU with U = [centred a / sqrt(n_a − ddof); centred b / sqrt(n_b − ddof)]
    u = torch.cat([(a64 - mu_a) / (a64.shape[0] - ddof) ** 0.5, (b64 - mu_b) / (b64.shape[0] - ddof) ** 0.5])
    d, m = delta.shape[0], u.shape[0]
    if method == "auto":
        method = "woodbury" if d > m else "direct"
    if method == "direct":
        s = u.T @ u + eps * torch.eye(d, dtype=torch.float64)
        return float(_quad_form_spd(s, delta))
    if method == "woodbury":
        q, r = torch.linalg.qr(u.T)                               # Uᵀ = QR: q [d, k], r [k, m], k = min(d, m)
        z = q.T @ delta                                            # δ inside span(Uᵀ) ...
        perp = delta - q @ z                                       # ... and orthogonal to it (S acts as εI)
        inner = _quad_form_spd(r @ r.T + eps * torch.eye(r.shape[0], dtype=torch.float64), z)
        return float(perp @ perp / eps + inner)
    raise ValueError(f"method must be 'auto', 'direct' or 'woodbury', got {method!r}.")


def fdr_per_layer(acts_a: torch.Tensor, acts_b: torch.Tensor, eps: float = 1e-3, *, ddof: int = 1,
                  method: FdrMethod = "auto") -> torch.Tensor:
    """FDR for each layer: acts_a [L, n_a, d], acts_b [L, n_b, d] -> float64 [L]."""
    _check_pair(acts_a, acts_b, 3, ddof + 1, "FDR")
    _check_finite(acts_a, "class a [layer, example, feature]")
    _check_finite(acts_b, "class b [layer, example, feature]")
    return torch.tensor([fisher_discriminant_ratio(acts_a[l], acts_b[l], eps, ddof=ddof, method=method)
                         for l in range(acts_a.shape[0])], dtype=torch.float64)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of x [n] with ties given their average rank (float64 [n])."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)              # last 1-based rank of each tie group
    group_rank = ends - (counts.to(torch.float64) - 1) / 2
    return group_rank[inverse]


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie), for scores [n] and bool labels [n].

    Computed with the Mann–Whitney U statistic on average ranks (ties count one half).
    """
    scores, labels = torch.as_tensor(scores).detach().cpu().reshape(-1), torch.as_tensor(labels).cpu().reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ in length.")
    _check_finite(scores.to(torch.float64), "scores")
    labels = labels.to(torch.bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes: got {n_pos} positive and {n_neg} negative labels.")
    ranks = average_ranks(scores.to(torch.float64))
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def projection_auroc(train_a: torch.Tensor, train_b: torch.Tensor, test_a: torch.Tensor, test_b: torch.Tensor,
                     direction: torch.Tensor | None = None) -> float:
    """AUROC of test projections onto ``direction`` [d] (default: mean(train_a) − mean(train_b)).

    train_*/test_* are [n, d]; class a is the positive class, so 1.0 means every test a projects higher
    than every test b, 0.5 is chance.
    """
    _check_pair(test_a, test_b, 2, 1, "AUROC")
    _check_finite(test_a, "test class a")
    _check_finite(test_b, "test class b")
    if direction is None:
        _check_pair(train_a, train_b, 2, 1, "a mean-difference direction")
        _check_finite(train_a, "train class a")
        _check_finite(train_b, "train class b")
        if train_a.shape[-1] != test_a.shape[-1]:
            raise ValueError(f"feature size mismatch: train d={train_a.shape[-1]}, test d={test_a.shape[-1]}.")
        direction = train_a.to(torch.float64).mean(0) - train_b.to(torch.float64).mean(0)
    direction = direction.detach().to("cpu", torch.float64).reshape(-1)
    if direction.shape[0] != test_a.shape[-1]:
        raise ValueError(f"feature size mismatch: direction d={direction.shape[0]}, test d={test_a.shape[-1]}.")
    scores = torch.cat([test_a.to("cpu", torch.float64), test_b.to("cpu", torch.float64)]) @ direction
    labels = torch.cat([torch.ones(test_a.shape[0], dtype=torch.bool), torch.zeros(test_b.shape[0], dtype=torch.bool)])
    return auroc(scores, labels)


def _split(n: int, test_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, test indices) of a random split of range(n), both non-empty."""
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    perm = torch.randperm(n, generator=gen)
    return perm[n_test:], perm[:n_test]


def split_auroc_per_layer(acts_a: torch.Tensor, acts_b: torch.Tensor, test_fraction: float = 0.3,
                          seed: int = 0) -> torch.Tensor:
    """Held-out AUROC per layer: acts_a [L, n_a, d], acts_b [L, n_b, d] -> float64 [L].

    Each class is split once (the same examples across layers; ``seed`` fixes it) into train and test
    (``test_fraction`` of it, at least one example each side); the direction is the train mean
    difference of that layer and the AUROC is over the test projections.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    _check_pair(acts_a, acts_b, 3, 2, "a held-out split")
    _check_finite(acts_a, "class a [layer, example, feature]")
    _check_finite(acts_b, "class b [layer, example, feature]")
    gen = torch.Generator().manual_seed(seed)
    tr_a, te_a = _split(acts_a.shape[1], test_fraction, gen)
    tr_b, te_b = _split(acts_b.shape[1], test_fraction, gen)
    return torch.tensor([projection_auroc(acts_a[l, tr_a], acts_b[l, tr_b], acts_a[l, te_a], acts_b[l, te_b])
                         for l in range(acts_a.shape[0])], dtype=torch.float64)


def _layer_axis(curves: dict[str, torch.Tensor], layers: list[int] | None) -> dict[str, tuple[list, list]]:
    out = {}
    for name, y in curves.items():
        y = torch.as_tensor(y).detach().cpu().reshape(-1).tolist()
        x = list(range(len(y))) if layers is None else list(layers)
        if len(x) != len(y):
            raise ValueError(f"curve {name!r} has {len(y)} values but {len(x)} layers were given.")
        out[name] = (x, y)
    return out


def separability_figure(curves: dict[str, torch.Tensor], metric: str = "FDR", title: str | None = None, *,
                        layers: list[int] | None = None, log_y: bool = False) -> go.Figure:
    """One line per condition (e.g. "plain" vs "reformulated") of a metric [L] across layers."""
    import plotly.graph_objects as go

    from moras_interp.viz.style import OKABE_ITO as _COLORS
    from moras_interp.viz.style import style_chart

    fig = go.Figure()
    for i, (name, (x, y)) in enumerate(_layer_axis(curves, layers).items()):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name,
                                 line={"color": _COLORS[i % len(_COLORS)]}))
    if metric.upper() == "AUROC" and not log_y:
        fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance")
    style_chart(fig, title=title or f"{metric} across layers", x_title="layer", y_title=metric, x_kind="integer")
    fig.update_layout(hovermode="x unified")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def separability_panel(fdr: dict[str, torch.Tensor], auroc: dict[str, torch.Tensor], title: str | None = None, *,
                       layers: list[int] | None = None, log_fdr: bool = False, n: str | None = None) -> go.Figure:
    """Two panels side by side: FDR [L] and AUROC [L] per condition, one colour per condition."""
    from plotly.subplots import make_subplots

    from moras_interp.viz.style import OKABE_ITO as _COLORS
    from moras_interp.viz.style import style_chart

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Fisher discriminant ratio", "held-out AUROC"))
    names = list(dict.fromkeys([*fdr, *auroc]))
    for col, curves in ((1, fdr), (2, auroc)):
        for name, (x, y) in _layer_axis(curves, layers).items():
            color = _COLORS[names.index(name) % len(_COLORS)]
            fig.add_scatter(x=x, y=y, mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1
                            or name not in fdr, line={"color": color}, row=1, col=col)
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", row=1, col=2)
    style_chart(fig, title=title or "Separability across layers", x_title="layer", y_title="", x_kind="integer",
                width=1000, height=460, n=n)
    fig.update_yaxes(title_text="FDR (between / within class)", type="log" if log_fdr else None, row=1, col=1)
    fig.update_yaxes(title_text="AUROC (held-out)", range=[0, 1.02], row=1, col=2)
    return fig
