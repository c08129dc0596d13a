"""Attention interventions for ablations, addressed by ``blocks.{l}.attn.hook_pattern`` names and heads.

    with attention_edits(model, [BiasImageKeys("blocks.*.attn.hook_pattern", heads=[0, 3], bias=1.0)],
                         layouts=batch.layouts):
        model.generate(batch, max_new_tokens=32)

While the context is open the text decoder runs a registered transformers attention function
(``moras_edit``) that recomputes attention eagerly for edited layers (pre-softmax score edits,
post-softmax edits, per-head output edits) and calls the model's own attention function for the others.
It works for forwards, generation (every step; image keys stay at their prefill positions) and inside
nnsight traces.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from moras_interp.models.finite import check_finite
from moras_interp.models.layout import TokenLayout

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM

EDIT_IMPL = "moras_edit"


@dataclass
class EditContext:
    """layer index and ``image_keys`` bool [b, k_len] (True where the key is an image token)."""

    layer: int
    image_keys: torch.Tensor


class AttentionEdit:
    """Base class: which layers/heads/query rows, and hooks into scores and per-head outputs.

    Args:
        hooks: ``blocks.{l}.attn.hook_pattern`` names or globs naming the edited layers.
        heads: head indices to edit (default all).
        query: ``"all"`` edits every query row; ``"last"`` only the last row of each forward (the last
            prompt token at prefill, the new token at every decoding step), as PAI does.
    """

    def __init__(self, hooks: str | Sequence[str] = "blocks.*.attn.hook_pattern", heads: Sequence[int] | None = None,
                 *, query: str = "all"):
        self.hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        self.heads = None if heads is None else list(heads)
        if query not in ("all", "last"):
            raise ValueError(f"query must be 'all' or 'last', got {query!r}.")
        self.query = query

    def layers(self, n_layers: int) -> set[int]:
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
        hit = {n for p in self.hooks for n in fnmatch.filter(names, p)}
        if not hit:
            raise KeyError(f"{type(self).__name__}: {self.hooks} match no 'blocks.{{l}}.attn.hook_pattern' name.")
        return {int(re.findall(r"\d+", n)[0]) for n in hit}

    def head_mask(self, n_heads: int, device: torch.device) -> torch.Tensor:
        m = torch.zeros(n_heads, dtype=torch.bool, device=device)
        m[self.heads if self.heads is not None else slice(None)] = True
        return m

    def scores(self, s: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        """s: float32 [b, H, q, k] pre-softmax (masked entries are -inf)."""
        return s

    def output(self, o: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        """o: [b, H, q, head_dim] per-head attention output before ``o_proj``."""
        return o


class BiasImageKeys(AttentionEdit):
    """Add ``bias`` to the pre-softmax scores of image keys for the chosen heads."""

    def __init__(self, hooks: str | Sequence[str] = "blocks.*.attn.hook_pattern", heads: Sequence[int] | None = None,
                 bias: float = 1.0, *, query: str = "all"):
        super().__init__(hooks, heads, query=query)
        self.bias = float(bias)

    def scores(self, s: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        sel = self.head_mask(s.shape[1], s.device)[None, :, None, None] & ctx.image_keys[:, None, None, :]
        return torch.where(sel, s + self.bias, s)


class ScaleImageAttention(BiasImageKeys):
    """Multiply the (unnormalised) attention to image keys by ``factor`` and renormalise.

    Exactly a pre-softmax bias of ``log(factor)`` on image keys; ``factor = 0`` removes image attention.
    """

    def __init__(self, hooks: str | Sequence[str] = "blocks.*.attn.hook_pattern", heads: Sequence[int] | None = None,
                 factor: float = 2.0, *, query: str = "all"):
        if factor < 0:
            raise ValueError(f"factor must be >= 0, got {factor}.")
        super().__init__(hooks, heads, bias=math.log(factor) if factor > 0 else -math.inf, query=query)


class PAIAmplify(AttentionEdit):
    """PAI (Liu et al., 2024): image-key scores z ← z + α·|z| before the softmax.

    As in PAI's code, only the last query row is edited by default (``query="last"``).
    """

    def __init__(self, hooks: str | Sequence[str] = "blocks.*.attn.hook_pattern", heads: Sequence[int] | None = None,
                 alpha: float = 0.5, *, query: str = "last"):
        super().__init__(hooks, heads, query=query)
        self.alpha = float(alpha)

    def scores(self, s: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        sel = self.head_mask(s.shape[1], s.device)[None, :, None, None] & ctx.image_keys[:, None, None, :]
        finite = torch.isfinite(s)
        return torch.where(sel & finite, s + self.alpha * s.abs(), s)


class MaskTopImageTokens(AttentionEdit):
    """Remove attention to the top ``fraction`` of image tokens (by this row's own attention) and renormalise."""

    def __init__(self, hooks: str | Sequence[str] = "blocks.*.attn.hook_pattern", heads: Sequence[int] | None = None,
                 fraction: float = 0.1, *, query: str = "all"):
        super().__init__(hooks, heads, query=query)
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
        self.fraction = float(fraction)

    def scores(self, s: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        img = ctx.image_keys[:, None, None, :]
        masked = s.masked_fill(~img, -math.inf)
        n_img = ctx.image_keys.sum(-1)  # [b]
        k = torch.ceil(n_img.float() * self.fraction).long().clamp(min=0)
        out = s.clone()
        sel = self.head_mask(s.shape[1], s.device)
        for b in range(s.shape[0]):
            if int(k[b]) == 0:
                continue
            idx = masked[b].topk(int(k[b]), dim=-1).indices  # [H, q, k_b]
            drop = torch.zeros_like(s[b], dtype=torch.bool).scatter_(-1, idx, True) & sel[:, None, None]
            out[b] = out[b].masked_fill(drop, -math.inf)
        return out


class KnockoutHeads(AttentionEdit):
    """Zero the chosen heads' outputs (their contribution to ``o_proj``)."""

    def output(self, o: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        keep = ~self.head_mask(o.shape[1], o.device)
        return o * keep[None, :, None, None].to(o.dtype)


_STATE: dict[int, tuple[list[AttentionEdit], torch.Tensor, Any, dict[int, int]]] = {}
_STAGE: dict[int, Any] = {}  # config id -> () -> the model's stage label, for finite-check errors


def _edited_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    state = _STATE.get(id(getattr(module, "config", None)))
    edits, image_keys, original, layer_of = state if state else ([], None, None, {})
    layer = layer_of.get(id(module), getattr(module, "layer_idx", -1))
    mine = [e for e in edits if layer in e._layers]
    if not mine and original is not None:
        return original(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    n_rep = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(n_rep, dim=1)
    v = value.repeat_interleave(n_rep, dim=1)
    s = torch.matmul(query.float(), k.float().transpose(-1, -2)) * (scaling or query.shape[-1] ** -0.5)
    if kwargs.get("softcap") is not None:
        s = kwargs["softcap"] * torch.tanh(s / kwargs["softcap"])
    if attention_mask is not None:
        m = attention_mask[..., : k.shape[2]]
        s = s.masked_fill(~m, -math.inf) if m.dtype == torch.bool else s + m.float()
    ik = image_keys[:, : k.shape[2]].to(s.device)
    if ik.shape[1] < k.shape[2]:  # generated tokens are never image tokens
        ik = torch.nn.functional.pad(ik, (0, k.shape[2] - ik.shape[1]), value=False)
    ctx = EditContext(layer, ik)
    for e in mine:
        s = _on_rows(e, s, e.scores(s, ctx))
    bad = torch.isnan(s) | torch.isposinf(s)  # would vanish in nan_to_num below (meant for fully masked rows)
    if bool(bad.any()):
        stage = _STAGE.get(id(getattr(module, "config", None)), lambda: "attention_edits")()
        check_finite(torch.where(bad, math.nan, 0.0), stage=stage, hook=f"blocks.{layer}.attn.hook_pattern",
                     dtype=query.dtype,
                     detail=f"pre-softmax scores after the attention edits {[type(e).__name__ for e in mine]}")
    p = torch.softmax(s, dim=-1).nan_to_num(0.0).to(query.dtype)
    o = torch.matmul(p, v)
    for e in mine:
        o = _on_rows(e, o, e.output(o, ctx))
    return o.transpose(1, 2).contiguous(), p


def _on_rows(edit: AttentionEdit, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """``after`` on the query rows the edit addresses (dim 2 of [b, H, q, ...]), ``before`` elsewhere."""
    if edit.query == "all":
        return after
    return torch.cat([before[:, :, :-1], after[:, :, -1:]], dim=2)


AttentionInterface.register(EDIT_IMPL, _edited_attention)
AttentionMaskInterface.register(EDIT_IMPL, eager_mask)


def image_key_mask(layouts: list[TokenLayout]) -> torch.Tensor:
    """bool [b, seq]: True at image-token positions."""
    m = torch.zeros(len(layouts), layouts[0].seq_len, dtype=torch.bool)
    for i, l in enumerate(layouts):
        m[i, l.image_positions] = True
    return m


@contextmanager
def attention_edits(model: MLLM, edits: Sequence[AttentionEdit], *, layouts: list[TokenLayout]) -> Iterator[None]:
    """Apply attention edits to every forward (and generation step) inside the block."""
    decoder = model.adapter.module(model.adapter.decoder)
    cfg = decoder.config
    for e in edits:
        e._layers = e.layers(model.n_layers)  # type: ignore[attr-defined]
    original_impl = cfg._attn_implementation
    # None (eager): unedited layers run the same generic eager math as edited ones, without edits.
    original = None if original_impl == "eager" else ALL_ATTENTION_FUNCTIONS.get_interface(original_impl, None)
    layers = model.adapter.module(model.adapter.decoder + ".layers")
    layer_of = {id(layer.self_attn): i for i, layer in enumerate(layers)}
    _STATE[id(cfg)] = (list(edits), image_key_mask(layouts), original, layer_of)
    _STAGE[id(cfg)] = lambda: model.stage_name or "attention_edits"
    cfg._attn_implementation = EDIT_IMPL
    try:
        yield
    finally:
        cfg._attn_implementation = original_impl
        _STATE.pop(id(cfg), None)
        _STAGE.pop(id(cfg), None)
