"""Exact attention probabilities for chosen query rows, recomputed from the attention call's inputs.

Inside an nnsight trace, the inputs of the attention function call in each ``self_attn`` forward
(post-RoPE query and key, the mask, ``scaling``, ``softcap``, ``sliding_window``) are read through
``.source``; only the needed query rows are turned into probabilities. Works identically whether the
model runs eager or sdpa attention, and never materialises a full [q, k] matrix per layer.
"""

from __future__ import annotations

from typing import Any

import torch

EXACT_IMPLEMENTATIONS: tuple[str, ...] = ("eager", "sdpa", "moras_edit")
"""Attention implementations whose attention call receives a 4D (or no) mask, so rows are exact."""


def attention_call_label(source: Any) -> str:
    """The nnsight ``.source`` label of the attention function call (``attention_interface_<n>``).

    nnsight numbers every occurrence of the name; the assignment comes first and the call last, so the
    highest-numbered label is the call (``attention_interface_1`` in transformers 5.x).
    """
    labels = [n for n in source.names if n.startswith("attention_interface_")]
    if not labels:
        raise RuntimeError(
            "This attention module's forward has no `attention_interface(...)` call visible to nnsight; "
            "exact attention rows are implemented for transformers-5 style attention modules."
        )
    return max(labels, key=lambda n: int(n.rsplit("_", 1)[1]))


def check_implementation(impl: str) -> None:
    """Raise a clear error for attention implementations whose mask is not a 4D (or absent) tensor."""
    if impl not in EXACT_IMPLEMENTATIONS:
        raise ValueError(
            f"cross_modal_attention is exact under eager or sdpa attention, but this model runs {impl!r} "
            "(its attention call gets a 2D padding mask or a block mask, so masked rows cannot be recomputed "
            "exactly). Load the model with load_model(..., attn_implementation='sdpa') (fast, exact) or "
            "'eager', or switch an already-loaded one with model.hf.set_attn_implementation('sdpa')."
        )


def rows_from_qk(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor, *,
                 scaling: float, softcap: float | None = None, sliding_window: int | None = None,
                 key_offset: int = 0) -> torch.Tensor:
    """Attention probabilities of chosen query rows.

    Args:
        q: [b, heads, q_len, head_dim] post-RoPE queries.
        k: [b, kv_heads, k_len, head_dim] post-RoPE keys (grouped-query heads share a key head; query head
            ``h`` reads key head ``h // (heads // kv_heads)``, as ``transformers.repeat_kv``).
        mask: None (pure causal), bool [b, 1|heads, q_len, k_len] (True = attend) or additive float.
        rows: LongTensor [b, r] query positions per example (indices into q_len).
        scaling: the score scale (1/sqrt(head_dim) or the model's own).
        softcap: logit soft-capping (Gemma2-style), applied as ``softcap * tanh(s / softcap)``.
        sliding_window: only used when ``mask`` is None: keys older than the window are masked.
        key_offset: position of key 0 relative to query 0 (non-zero with a KV cache).

    Returns:
        float32 [b, heads, r, k_len], rows sum to 1 over keys.
    """
    b, h, _, dh = q.shape
    kvh, k_len = k.shape[1], k.shape[2]
    if h % kvh:
        raise ValueError(f"{h} query heads are not a multiple of {kvh} key/value heads.")
    if mask is not None and mask.ndim != 4:
        raise ValueError(f"Expected a 4D attention mask [b, 1|heads, q, k], got shape {tuple(mask.shape)}; "
                         "load the model with attn_implementation='sdpa' or 'eager'.")
    idx = rows.to(q.device)
    r = idx.shape[1]
    qr = torch.gather(q, 2, idx[:, None, :, None].expand(b, h, r, dh)).float()
    # group query heads by their key head instead of repeating k: [b, kvh, n_rep*r, dh] @ [b, kvh, dh, k]
    qg = qr.reshape(b, kvh, (h // kvh) * r, dh)
    scores = torch.matmul(qg, k.float().transpose(-1, -2)).reshape(b, h, r, k_len) * scaling
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if mask is None:
        key_pos = torch.arange(k_len, device=q.device)[None, None, :]
        qpos = (idx + key_offset)[:, :, None]
        allowed = key_pos <= qpos
        if sliding_window is not None:
            allowed &= key_pos > qpos - sliding_window
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    else:
        m = mask[..., :k_len]
        m = torch.gather(m, 2, idx[:, None, :, None].expand(b, m.shape[1], r, m.shape[-1]))
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    return torch.softmax(scores, dim=-1)
