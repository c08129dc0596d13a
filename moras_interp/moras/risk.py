"""MoRAS risk: the stage-2 score s (:mod:`moras_interp.moras.scoring`) mapped to a strength r.

    r = 1 / (1 + exp(−k (s − x0)))                      mapping="sigmoid" (the paper)
    r = clip(0.5 + k (s − x0) / 4, 0, 1)                 mapping="linear": the sigmoid's tangent at x0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from moras_interp.activations.separability import auroc
from moras_interp.eval.metrics import tie_scores
from moras_interp.moras.scoring import SCORE_MAX, decayed_distribution, similarity

MAPPINGS = ("sigmoid", "linear")


@dataclass
class Calibration:
    """r = sigmoid(k (s − x0)); ``method`` says how (x0, k) were obtained.

    Attributes:
        x0, k: the sigmoid's centre and slope.
        method: "official" (x0 = mean s, k = ln 99 / (1 − x0)), "logistic", "preset:<name>" or "manual".
        auroc: AUROC of s for unsafe vs safe on the calibration set (None for presets).
        n_unsafe, n_safe: calibration set sizes.
        tpr, fpr: the operating point on the calibration set: fraction of unsafe / safe examples with
            r ≥ 0.5 (i.e. s ≥ x0).
        forced: a preset applied although the prototype's prompt set / system prompt differ from the ones the
            preset was fitted with (``Calibration.preset(name, force=True)``); see :mod:`moras_interp.moras.presets`.
    """

    x0: float
    k: float
    method: str = "manual"
    auroc: float | None = None
    n_unsafe: int = 0
    n_safe: int = 0
    tpr: float | None = None
    fpr: float | None = None
    forced: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.x0) and math.isfinite(self.k)):
            raise ValueError(f"Calibration needs finite x0 and k, got x0={self.x0}, k={self.k}.")

    def risk(self, s: torch.Tensor | float, mapping: str = "sigmoid") -> torch.Tensor:
        """r in [0, 1] for scores s: the sigmoid, or (``mapping="linear"``) its tangent at x0 clipped to [0, 1]."""
        z = self.k * (torch.as_tensor(s, dtype=torch.float64) - self.x0)
        if mapping == "sigmoid":
            return torch.sigmoid(z).float()
        if mapping == "linear":
            return (0.5 + z / 4).clamp(0.0, 1.0).float()
        raise ValueError(f"mapping={mapping!r}: use one of {', '.join(MAPPINGS)}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def preset(cls, name: str, *, force: bool = False) -> Calibration:
        """The official hard-coded constants (LLaVA-1.5 7B / 13B), bound to the prompt set and system prompt they
        were fitted with: :class:`~moras_interp.moras.pipeline.MoRAS` refuses a prototype built otherwise unless
        ``force=True`` (:func:`moras_interp.moras.presets.check_preset`)."""
        if name not in PRESETS:
            raise KeyError(f"Unknown preset {name!r}; available: {', '.join(PRESETS)}.")
        x0, k = PRESETS[name]
        return cls(x0, k, f"preset:{name}", forced=force)

    @classmethod
    def fit(cls, scores: Sequence[float] | torch.Tensor, labels: Sequence[bool] | torch.Tensor, *,
            method: str = "official", s_max: float = 1.0) -> Calibration:
        """Fit (x0, k) from similarity scores and labels (True = unsafe).

        ``official``: x0 = mean(s), k = ln(99) / (s_max − x0) (so r = 0.99 at s = s_max), as the authors did with
        the cosine (s_max = 1); for the negated divergences s_max = 0 (``scoring.SCORE_MAX``).
        ``logistic``: maximum-likelihood logistic regression of the label on s (k = slope, x0 = −b / k).
        """
        s = torch.as_tensor(scores, dtype=torch.float64).flatten()
        y = torch.as_tensor(labels, dtype=torch.bool).flatten()
        if s.numel() == 0:
            raise ValueError("Empty calibration set: give unsafe and safe image-question pairs.")
        if s.numel() != y.numel():
            raise ValueError(f"{s.numel()} scores but {y.numel()} labels.")
        if not torch.isfinite(s).all():
            raise ValueError("Calibration scores contain NaN/Inf.")
        n_u, n_s = int(y.sum()), int((~y).sum())
        if n_u == 0 or n_s == 0:
            raise ValueError(f"The calibration set needs both classes; got {n_u} unsafe and {n_s} safe examples.")
        # scores equal up to float32 noise (identical stage-2 text scored in different batch rows differs by ~1e-7)
        # are ties: without this, AUROC over tied pairs of opposite classes flips with the batch layout
        auc = auroc(torch.as_tensor(tie_scores(s.numpy())), y)
        if method == "official":
            x0 = float(s.mean())
            if x0 >= s_max:
                raise ValueError(f"mean score {x0} reaches s_max = {s_max}: the official slope ln 99 / (s_max − x0) "
                                 "is undefined (use method='logistic').")
            k = math.log(99.0) / (s_max - x0)
        elif method == "logistic":
            k, b = _logistic(s, y.double())
            if abs(k) < 1e-12:
                raise ValueError("Logistic fit found no dependence of the label on s.")
            x0 = -b / k
        else:
            raise ValueError(f"method={method!r}: use 'official' or 'logistic'.")
        flagged = (k * (s - x0)) >= 0
        return cls(x0, k, method, auc, n_u, n_s, float(flagged[y].double().mean()), float(flagged[~y].double().mean()))


PRESETS: dict[str, tuple[float, float]] = {
    "llava-1.5-7b": (0.712, 15.955),
    "llava-1.5-13b": (0.741, 17.811),  # as published; ln 99 / (1 − 0.741) = 17.742 (see presets.PRESET_INFO)
}


def _logistic(s: torch.Tensor, y: torch.Tensor, l2: float = 1e-4, iters: int = 100) -> tuple[float, float]:
    """Newton's method for p = sigmoid(a s + b) with a tiny ridge; returns (a, b)."""
    x = torch.stack([s, torch.ones_like(s)], dim=1)
    w = torch.zeros(2, dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(x @ w)
        g = x.T @ (p - y) + l2 * w
        h = (x * (p * (1 - p))[:, None]).T @ x + l2 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(h, g)
        w = w - step
        if step.abs().max() < 1e-10:
            break
    return float(w[0]), float(w[1])


__all__ = ["MAPPINGS", "PRESETS", "SCORE_MAX", "Calibration", "decayed_distribution", "similarity"]
