"""``cross_modal_attention``: exact attention rows from chosen text queries, per layer and head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.attention.result import CrossModalAttention
from moras_interp.attention.rows import attention_call_label, check_implementation, rows_from_qk
from moras_interp.models.finite import check_finite, is_finite

if TYPE_CHECKING:
    from moras_interp.models.batch import Batch
    from moras_interp.models.mllm import MLLM

Query = str | Sequence[int] | torch.Tensor


def query_rows(batch: Batch, query: Query) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [b, r], valid [b, r]) for ``"last"``, ``"instruction"`` or explicit positions.

    Explicit positions are given per row of the padded batch (the same list for every example) or as a
    LongTensor [b, r]. ``"instruction"`` rows are padded with the last position and marked invalid.
    """
    b = len(batch)
    if isinstance(query, str):
        if query == "last":
            rows = torch.tensor([[l.last] for l in batch.layouts])
            return rows, torch.ones_like(rows, dtype=torch.bool)
        if query == "instruction":
            ins = [l.instruction for l in batch.layouts]
            if any(i.numel() == 0 for i in ins):
                raise ValueError("An example has no instruction positions (prompt text not found in its tokens); "
                                 "use query='last' or explicit positions.")
            r = max(i.numel() for i in ins)
            rows = torch.stack([torch.cat([i, i.new_full((r - i.numel(),), l.last)])
                                for i, l in zip(ins, batch.layouts)])
            valid = torch.stack([torch.arange(r) < i.numel() for i in ins])
            return rows, valid
        raise ValueError(f"query={query!r}: use 'last', 'instruction', a list of positions or a [b, r] tensor.")
    rows = torch.as_tensor(query, dtype=torch.long)
    if rows.ndim == 1:
        rows = rows[None].expand(b, -1)
    if rows.ndim != 2 or rows.shape[0] != b:
        raise ValueError(f"query positions must be [r] or [{b}, r] for this batch of {b}; got {tuple(rows.shape)}.")
    seq = batch.input_ids.shape[1]
    if rows.numel() == 0:
        raise ValueError("query positions are empty: give at least one position.")
    if rows.min() < 0 or rows.max() >= seq:
        raise ValueError(f"query positions must lie in [0, {seq}) for this batch (rows are left-padded).")
    return rows.clone(), torch.ones_like(rows, dtype=torch.bool)


def _layer_list(n_layers: int, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    out = []
    for l in layers:
        if not -n_layers <= int(l) < n_layers:
            raise ValueError(f"layer {l} out of range for a model with {n_layers} layers.")
        out.append(int(l) % n_layers)
    if not out:
        raise ValueError("layers is empty: pass None for all layers or a list of layer indices.")
    return out


def _head_list(n_heads: int, heads: Sequence[int] | None) -> list[int] | None:
    if heads is None:
        return None
    hs = [int(h) for h in heads]
    if not hs or any(not 0 <= h < n_heads for h in hs):
        raise ValueError(f"heads must be a non-empty list of head indices in [0, {n_heads}), got {list(heads)}.")
    return hs


def _layer_rows(src: Any, label: str, rows: torch.Tensor, edited: bool) -> torch.Tensor:
    """Inside a trace: float32 [b, H, r, keys] probabilities of ``rows`` at one attention module."""
    call = getattr(src, label)
    args, kwargs = call.inputs
    q, k = args[1], args[2]
    mask = args[4] if len(args) > 4 else kwargs.get("attention_mask")
    if edited:  # under attention_edits the edited probabilities are what the model used
        p = call.output[1]
        if p is not None:
            idx = rows.to(p.device)
            return torch.gather(p, 2, idx[:, None, :, None].expand(p.shape[0], p.shape[1], idx.shape[1],
                                                                   p.shape[-1])).float()
    scaling = kwargs.get("scaling") or q.shape[-1] ** -0.5
    return rows_from_qk(q, k, mask, rows, scaling=float(scaling), softcap=kwargs.get("softcap"),
                        sliding_window=kwargs.get("sliding_window"))


@torch.no_grad()
def cross_modal_attention(model: MLLM, batch: Batch, *, query: Query = "last", layers: Sequence[int] | None = None,
                          heads: Sequence[int] | None = None) -> CrossModalAttention:
    """Attention from chosen query positions to every key, per layer and head, in one traced forward.

    Works under eager and sdpa attention: the probabilities are recomputed for the chosen rows only from
    the post-RoPE query/key and mask that the model's own attention call receives, so they are exact
    (GQA, sliding windows, soft-capping, multimodal RoPE and left padding included) and cost
    O(layers · heads · rows · keys) memory. The forward runs without a KV cache and stops right after the
    last requested layer's attention (no MLP tail, final norm or logits). Inside :func:`attention_edits` the rows are the
    edited probabilities the model actually used.

    Args:
        model: the wrapped model (eager or sdpa attention; other implementations raise a clear error).
        batch: from ``model.prepare``.
        query: ``"last"`` (the last prompt token), ``"instruction"`` (every instruction token; shorter
            examples' rows are padded and marked invalid) or explicit positions ([r] or LongTensor [b, r]).
        layers: decoder layers (default all; negative indices allowed). heads: head indices (default all).

    Returns:
        :class:`CrossModalAttention` holding ``rows`` float32 [b, layers, heads, r, keys] on the CPU.
    """
    impl = model.attn_implementation
    check_implementation(impl)
    n_layers = model.n_layers
    layer_list = _layer_list(n_layers, layers)
    head_sel = _head_list(int(model.cfg.num_attention_heads), heads)
    rows, valid = query_rows(batch, query)
    wanted = sorted(set(layer_list))
    attn_paths = [f"{model.adapter.decoder}.layers.{l}.self_attn" for l in wanted]
    label = attention_call_label(model.envoy(attn_paths[0]).source)
    n_heads = int(model.cfg.num_attention_heads) if head_sel is None else len(head_sel)
    # written layer by layer inside the trace: no list of per-layer tensors to stack (and copy) afterwards
    buf = torch.empty(len(batch), len(wanted), n_heads, rows.shape[1], batch.input_ids.shape[1],
                      dtype=torch.float32, device=model.device)
    with model.trace(batch, use_cache=False) as tracer:  # no KV cache: it would hold L×2×[b, kv, seq, dh]
        for j, path in enumerate(attn_paths):
            p = _layer_rows(model.envoy(path).source, label, rows, impl == "moras_edit")
            buf[:, j] = p if head_sel is None else p[:, head_sel]
        tracer.stop()  # nothing after the last requested attention call is needed
    stacked = buf if layer_list == wanted else buf[:, [wanted.index(l) for l in layer_list]]
    stacked = stacked.to("cpu")  # [b, L, H, r, keys]
    if not is_finite(stacked):
        bad = [l for j, l in enumerate(layer_list) if not is_finite(stacked[:, j])]
        check_finite(stacked[:, layer_list.index(bad[0])], stage=model.stage_name or "cross_modal_attention",
                     hook=f"blocks.{bad[0]}.attn.hook_pattern", examples=list(batch.prompts), dtype=model.dtype,
                     detail=f"non-finite attention rows at layers {bad}")
    head_list = list(range(n_heads)) if head_sel is None else head_sel
    return CrossModalAttention(rows=stacked, query_positions=rows, query_valid=valid, layers=layer_list,
                               heads=head_list, layouts=batch.layouts, model_id=model.model_id,
                               prompts=list(batch.prompts), images=batch.images,
                               query=query if isinstance(query, str) else "positions")
