"""What a norm module computes, as TransformerLens sees it: ``out = normalized * weight + bias`` with
``normalized = x / scale`` (RMSNorm) or ``(x - mean) / scale`` (LayerNorm), ``scale`` [..., 1] per position.

:func:`norm_affine` wraps a decoder norm whose convention :func:`~moras_interp.models.derived_hooks.norm_kind`
identified (Llama / Qwen ``RMSNorm``: weight ``w``; Gemma's: ``1 + w``; LayerNorm), giving the effective weight and
bias that direct logit attribution folds into the unembedding directions (TransformerLens's ``fold_ln``), and
the linear normalization of a stack of residual components with the scale of their sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moras_interp.models.derived_hooks import norm_kind, norm_parts


@dataclass(frozen=True)
class NormAffine:
    """A norm's convention and its effective affine part.

    Attributes:
        module: the norm module. kind: ``"rms"``, ``"gemma"`` (RMS with weight ``1 + w``) or ``"layer"``.
        weight: float32 [d], the effective weight (Gemma: ``1 + w``). bias: float32 [d] or None.
    """

    module: torch.nn.Module
    kind: str
    weight: torch.Tensor
    bias: torch.Tensor | None

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """[..., 1]: the norm's scale at input ``x`` [..., d], as ``hook_scale`` reads it."""
        return norm_parts(self.module, x, self.kind)[0]

    def normalize(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """[..., d]: ``x`` (or a stack of its components) centred (LayerNorm) and divided by ``scale``.

        Linear in ``x`` for a fixed ``scale``: components normalized with the scale of their sum add up to the
        normalized sum.
        """
        if self.kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        return x / scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's output recomputed from ``x`` (float32 or wider)."""
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        out = self.normalize(xf, self.scale(xf)) * self.weight.to(xf.dtype)
        return out + self.bias.to(xf.dtype) if self.bias is not None else out


def norm_affine(module: torch.nn.Module) -> NormAffine:
    """The :class:`NormAffine` of a norm module (``TypeError`` naming the class for an unknown convention)."""
    kind = norm_kind(module)
    w = module.weight.detach().float()
    b = getattr(module, "bias", None)
    bias = b.detach().float() if kind == "layer" and isinstance(b, torch.Tensor) else None
    return NormAffine(module, kind, 1.0 + w if kind == "gemma" else w, bias)
