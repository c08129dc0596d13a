"""What a norm module computes, as TransformerLens sees it: ``out = normalized * weight + bias`` with
``normalized = x / scale`` (RMSNorm) or ``(x - mean) / scale`` (LayerNorm), ``scale`` [..., 1] per position.

:func:`norm_affine` identifies a decoder norm by probing it (no class-name lists): Llama / Qwen / Mistral
``RMSNorm`` (weight ``w``), Gemma's ``RMSNorm`` (weight ``1 + w``), ``torch.nn.LayerNorm``. The returned
:class:`NormAffine` gives the effective weight and bias, which is what direct logit attribution folds into the
unembedding directions (TransformerLens's ``fold_ln``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

NormKind = Literal["rms", "layernorm"]


@dataclass(frozen=True)
class NormAffine:
    """A norm's kind and its effective affine part.

    Attributes:
        kind: ``"rms"`` (no centering) or ``"layernorm"`` (centering).
        weight: float [d], the effective weight (Gemma: ``1 + w``).
        bias: float [d] or None.
        eps: the epsilon inside the square root.
    """

    kind: NormKind
    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """[..., 1]: the norm's scale of ``x`` [..., d] (float32 or wider, as the HF norms compute it)."""
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if self.kind == "layernorm":
            return (xf.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()
        return (xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def normalize(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """[..., d]: ``x`` (or a stack of its components) centred (LayerNorm) and divided by ``scale``.

        Linear in ``x`` for a fixed ``scale``: components normalized with the scale of their sum add up to the
        normalized sum.
        """
        if self.kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        return x / scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's output recomputed from ``x`` (used to check the identification)."""
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        out = self.normalize(xf, self.scale(xf)) * self.weight.to(xf.dtype)
        return out + self.bias.to(xf.dtype) if self.bias is not None else out


def _eps(module: torch.nn.Module) -> float:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        v = getattr(module, attr, None)
        if isinstance(v, (int, float)):
            return float(v)
    raise TypeError(f"{type(module).__name__}: no epsilon attribute (variance_epsilon / eps) found.")


@torch.no_grad()
def norm_affine(module: torch.nn.Module) -> NormAffine:
    """Identify ``module`` (an RMSNorm with weight ``w`` or ``1 + w``, or a LayerNorm) by probing it.

    Raises ``TypeError`` naming the class when none of the three formulas reproduces its output.
    """
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight; cannot fold it into logit directions.")
    b = getattr(module, "bias", None)
    b = b.detach().float() if isinstance(b, torch.Tensor) else None
    eps, wf = _eps(module), w.detach().float()
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, w.shape[-1], generator=gen) * 2 + 0.5).to(w.device, w.dtype)
    got = module(x).float()
    cands = [NormAffine("rms", wf, b, eps), NormAffine("rms", 1.0 + wf, b, eps), NormAffine("layernorm", wf, b, eps)]
    tol = 1e-4 if w.dtype == torch.float32 else 3e-2
    errs = [float((c(x.float()) - got).abs().max()) for c in cands]
    best = min(range(3), key=lambda i: errs[i])
    if errs[best] > tol * max(1.0, float(got.abs().max())):
        raise TypeError(f"{type(module).__name__}: not an RMSNorm (w or 1+w) or LayerNorm (max error {min(errs):.2e}); "
                        "exact norm folding is not supported for it.")
    return cands[best]
