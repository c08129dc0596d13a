"""Exact attention probabilities for chosen query rows, recomputed from the attention call's inputs.

Inside an nnsight trace, the inputs of the attention function call in each ``self_attn`` forward
(post-RoPE query and key, the mask, ``scaling``, ``softcap``, ``sliding_window``) are read through
``.source``; only the needed query rows are turned into probabilities. Works identically whether the
model runs eager or sdpa attention, and never materialises a full [q, k] matrix per layer.
"""

from __future__ import annotations

from typing import Any

import torch


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


def rows_from_qk(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor, *,
                 scaling: float, softcap: float | None = None, sliding_window: int | None = None,
                 key_offset: int = 0) -> torch.Tensor:
    """Attention probabilities of chosen query rows.

    Args:
        q: [b, heads, q_len, head_dim] post-RoPE queries.
        k: [b, kv_heads, k_len, head_dim] post-RoPE keys (grouped-query heads are repeated here).
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
    n_rep = h // k.shape[1]
    kk = k.repeat_interleave(n_rep, dim=1) if n_rep > 1 else k
    idx = rows.to(q.device)
    qr = torch.gather(q, 2, idx[:, None, :, None].expand(b, h, idx.shape[1], dh))
    scores = torch.matmul(qr.float(), kk.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if mask is None:
        key_pos = torch.arange(kk.shape[2], device=q.device)[None, None, :]
        qpos = (idx + key_offset)[:, :, None]
        allowed = key_pos <= qpos
        if sliding_window is not None:
            allowed &= key_pos > qpos - sliding_window
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    else:
        m = mask[..., : kk.shape[2]]
        m = torch.gather(m, 2, idx[:, None, :, None].expand(b, m.shape[1], idx.shape[1], m.shape[-1]))
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    return torch.softmax(scores, dim=-1)
