"""``cross_modal_attention``: exact attention rows from chosen text queries, per layer and head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from moras_interp.attention.result import CrossModalAttention
from moras_interp.attention.rows import attention_call_label, rows_from_qk

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
                raise ValueError("An example has no instruction positions (prompt text not found in its tokens).")
            r = max(i.numel() for i in ins)
            rows = torch.stack([torch.cat([i, i.new_full((r - i.numel(),), l.last)])
                                for i, l in zip(ins, batch.layouts)])
            valid = torch.stack([torch.arange(r) < i.numel() for i in ins])
            return rows, valid
        raise ValueError(f"query={query!r}: use 'last', 'instruction', a list of positions or a [b, r] tensor.")
    rows = torch.as_tensor(query, dtype=torch.long)
    if rows.ndim == 1:
        rows = rows[None].expand(b, -1)
    if rows.shape[0] != b:
        raise ValueError(f"query positions have batch size {rows.shape[0]}, the batch has {b} examples.")
    seq = batch.input_ids.shape[1]
    if rows.numel() and (rows.min() < 0 or rows.max() >= seq):
        raise ValueError(f"query positions must lie in [0, {seq}) for this batch.")
    return rows.clone(), torch.ones_like(rows, dtype=torch.bool)


@torch.no_grad()
def cross_modal_attention(model: MLLM, batch: Batch, *, query: Query = "last", layers: Sequence[int] | None = None,
                          heads: Sequence[int] | None = None) -> CrossModalAttention:
    """Attention from chosen query positions to every key, per layer and head, in one traced forward.

    Works under eager and sdpa attention: the probabilities are recomputed for the chosen rows only from
    the post-RoPE query/key and mask that the model's own attention call receives, so they are exact
    (GQA, sliding windows, soft-capping, multimodal RoPE and left padding included) and cost
    O(layers · heads · rows · keys) memory.

    Returns:
        :class:`CrossModalAttention` holding ``rows`` float32 [b, layers, heads, r, keys].
    """
    n_layers = model.n_layers
    layer_list = list(range(n_layers)) if layers is None else [int(l) % n_layers for l in layers]
    rows, valid = query_rows(batch, query)
    attn_paths = [f"{model.adapter.decoder}.layers.{l}.self_attn" for l in sorted(set(layer_list))]
    label = attention_call_label(model.envoy(attn_paths[0]).source)
    out: list[torch.Tensor] = []
    with model.trace(batch):
        for path in attn_paths:
            args, kwargs = getattr(model.envoy(path).source, label).inputs
            q, k = args[1], args[2]
            mask = args[4] if len(args) > 4 else kwargs.get("attention_mask")
            scaling = kwargs.get("scaling") or q.shape[-1] ** -0.5
            p = rows_from_qk(q, k, mask, rows, scaling=float(scaling), softcap=kwargs.get("softcap"),
                             sliding_window=kwargs.get("sliding_window"))
            if heads is not None:
                p = p[:, list(heads)]
            out.append(p.cpu().save())
    by_layer = dict(zip(sorted(set(layer_list)), out))
    stacked = torch.stack([by_layer[l] for l in layer_list], dim=1)  # [b, L, H, r, keys]
    head_list = list(range(stacked.shape[2])) if heads is None else list(heads)
    return CrossModalAttention(rows=stacked, query_positions=rows, query_valid=valid, layers=layer_list,
                               heads=head_list, layouts=batch.layouts, model_id=model.model_id,
                               prompts=list(batch.prompts), images=batch.images)
