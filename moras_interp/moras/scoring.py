"""Stage-2 scores: γ-decayed next-token distributions of the query vs the unsafe prototype.

    q_t = softmax(W h_t),  p_t = softmax(W u_t),  Q = Σ_{t<L} γ^t q_t,  P = Σ_{t<L} γ^t p_t

L is the number of steps the query has (its greedy stage 2 may stop at EOS before N): the prototype is summed
over the same L steps, as the authors' code does (``range(min(n_token, len(base_state1)))`` on both sides).

    score="cosine" (the paper):  s = cos(P, Q)                          in [0, 1], 1 = same distribution
    score="kl":                  s = −KL(P̂ ‖ Q̂)                         ≤ 0,      0 = same distribution
    score="ce":                  s = −H(P̂, Q̂) = −Σ_v P̂_v log Q̂_v          ≤ 0
with P̂ = P / Σγ^t, Q̂ = Q / Σγ^t (the mixtures normalised). Divergences are negated so that, for every score,
larger s = closer to the unsafe prototype = riskier, and r = sigmoid(k (s − x0)) increases with risk.
"""

from __future__ import annotations

import torch

SCORES = ("cosine", "kl", "ce")
SCORE_MAX: dict[str, float] = {"cosine": 1.0, "kl": 0.0, "ce": 0.0}
"""The supremum of each score (the official slope is k = ln 99 / (s_max − x0): r = 0.99 at the best score)."""


def _weights(valid: torch.Tensor, gamma: float) -> torch.Tensor:
    """float64 [b, N]: γ^t where step t exists, else 0."""
    n = valid.shape[-1]
    return (gamma ** torch.arange(n, dtype=torch.float64))[None] * valid.double()


@torch.no_grad()
def _log_probs(states: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    """log softmax(W h): states [..., d] -> float64 [..., vocab] (on CPU)."""
    w = lm_head.weight
    logits = lm_head(states.to(device=w.device, dtype=w.dtype)).double().cpu()
    return torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def decayed_distribution(states: torch.Tensor, lm_head: torch.nn.Module, gamma: float,
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_t γ^t softmax(W h_t) over the existing steps. states: [..., N, d]; valid: bool [..., N] -> float32 [..., vocab]."""
    v = torch.ones(states.shape[:-1], dtype=torch.bool) if valid is None else valid.cpu()
    probs = _log_probs(states, lm_head).exp()
    return (probs * _weights(v, gamma)[..., None]).sum(-2).float()


def _check(states: torch.Tensor, prototype: torch.Tensor, valid: torch.Tensor) -> None:
    if states.shape[-2:] != prototype.shape:
        raise ValueError(f"states {tuple(states.shape)} and prototype {tuple(prototype.shape)} disagree on (N, d).")
    if tuple(valid.shape) != tuple(states.shape[:2]):
        raise ValueError(f"valid mask {tuple(valid.shape)} does not match states {tuple(states.shape[:2])} [b, N].")
    if not bool(valid[:, 0].all()):
        raise ValueError("Every query needs step 0 (the prefill): its valid mask starts with False.")
    for name, t in (("stage-2 states", states), ("unsafe prototype", prototype)):
        if not torch.isfinite(t).all():
            raise ValueError(f"The {name} contain NaN/Inf: run the model in float32 or bfloat16 (float16 overflows) "
                             "and rebuild the prototype with UnsafePrototype.build.")


@torch.no_grad()
def similarity(states: torch.Tensor, prototype: torch.Tensor, lm_head: torch.nn.Module, gamma: float = 0.3, *,
               valid: torch.Tensor | None = None, score: str = "cosine") -> torch.Tensor:
    """s per example (see the module docstring). states: [b, N, d]; prototype: [N, d]; valid: bool [b, N]
    (default all steps) -> float32 [b]."""
    if score not in SCORES:
        raise ValueError(f"score={score!r}: use one of {', '.join(SCORES)}.")
    v = torch.ones(states.shape[:2], dtype=torch.bool) if valid is None else valid.cpu().bool()
    _check(states, prototype, v)
    w = _weights(v, gamma)                                   # [b, N]
    log_q = _log_probs(states, lm_head)                      # [b, N, V]
    log_p = _log_probs(prototype, lm_head)                   # [N, V]
    if score == "cosine":
        q = (log_q.exp() * w[..., None]).sum(1)
        p = w @ log_p.exp()                                  # [b, V]: the prototype over each query's steps
        return torch.nn.functional.cosine_similarity(q, p, dim=-1).float()
    wn = w / w.sum(1, keepdim=True)
    log_wn = torch.where(wn > 0, wn, torch.ones_like(wn)).log().masked_fill(wn == 0, float("-inf"))
    log_qh = torch.logsumexp(log_q + log_wn[..., None], dim=1)         # log Q̂ [b, V]
    log_ph = torch.logsumexp(log_p[None] + log_wn[..., None], dim=1)   # log P̂ [b, V]
    ph = log_ph.exp()
    ce = -(ph * log_qh).sum(-1)
    out = ce if score == "ce" else ce + torch.where(ph > 0, ph * log_ph, 0.0).sum(-1)  # KL = H(P̂, Q̂) − H(P̂)
    return (-out).float()
