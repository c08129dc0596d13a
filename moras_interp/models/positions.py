"""Position selection for cached tensors: TransformerLens's ``pos_slice`` plus token-layout groups.

A selection (:data:`PosSlice`) is one of

- ``None``: every position;
- an ``int`` (negative allowed): that position, the position axis is dropped (TransformerLens's ``Slice(int)``);
- a ``slice`` or a ``(start, stop[, step])`` tuple: a range;
- a list / 1-D LongTensor of positions (shared by every example);
- a LongTensor ``[b, n]``: ``n`` positions per example;
- ``"last"``: each example's last prompt token (axis dropped, like an int);
- ``"image"``, ``"instruction"``, ``"text"``: each example's image / instruction / non-padding text positions from
  its :class:`~moras_interp.models.layout.TokenLayout` (``[b, n]``; every example must have the same ``n``, else a
  ``ValueError`` says to select per example, e.g. ``cache.image(name, example)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moras_interp.models.layout import TokenLayout

PosSlice = int | slice | tuple | Sequence[int] | torch.Tensor | str | None

GROUPS = ("last", "image", "instruction", "text")


def layout_positions(layouts: Sequence[TokenLayout], group: str) -> list[torch.Tensor]:
    """Per example, LongTensor [n_e]: the positions of ``group`` (one of :data:`GROUPS`)."""
    if group == "last":
        return [torch.tensor([lay.last]) for lay in layouts]
    if group == "image":
        return [lay.image_positions for lay in layouts]
    if group == "instruction":
        return [lay.instruction for lay in layouts]
    if group == "text":
        return [lay.text_positions for lay in layouts]
    raise ValueError(f"Unknown position group {group!r}; use one of {', '.join(GROUPS)}.")


def _per_example(sel: str, layouts: Sequence[TokenLayout] | None) -> torch.Tensor:
    if layouts is None:
        raise ValueError(f"pos_slice={sel!r} needs token layouts; build the cache with model.run_with_cache(batch, ...) "
                         "from a Batch made by model.prepare(...).")
    pos = layout_positions(layouts, sel)
    counts = sorted({int(p.numel()) for p in pos})
    if len(counts) > 1:
        raise ValueError(f"pos_slice={sel!r}: the examples have {counts} such positions; a batched selection needs the "
                         f"same number in every example. Select per example (cache.{sel}(name, example)) or run "
                         "one example per batch.")
    return torch.stack([p.long() for p in pos]) if pos else torch.zeros(0, 0, dtype=torch.long)


def select_positions(t: torch.Tensor, sel: PosSlice, layouts: Sequence[TokenLayout] | None = None, *,
                     pos_dim: int = -2) -> torch.Tensor:
    """``t`` restricted to the selected positions along ``pos_dim`` (batch axis = the axis right before it).

    Shapes: ``t`` [..., b, pos, *rest] -> [..., b, n, *rest] (or [..., b, *rest] for an int / ``"last"``).
    """
    if sel is None:
        return t
    pd = pos_dim % t.ndim
    if isinstance(sel, str):
        idx = _per_example(sel, layouts)
        out = _gather(t, idx.to(t.device), pd)
        return out.squeeze(pd) if sel == "last" else out
    if isinstance(sel, int):
        return t.select(pd, sel)
    if isinstance(sel, slice):
        return t[(slice(None),) * pd + (sel,)]
    if isinstance(sel, tuple):
        return t[(slice(None),) * pd + (slice(*sel),)]
    idx = torch.as_tensor(sel, dtype=torch.long, device=t.device)
    if idx.ndim == 1:
        return t.index_select(pd, idx)
    if idx.ndim == 2:
        return _gather(t, idx, pd)
    raise ValueError(f"pos_slice tensor must be [n] or [b, n] positions, got shape {tuple(idx.shape)}.")


def _gather(t: torch.Tensor, idx: torch.Tensor, pd: int) -> torch.Tensor:
    """t [..., b, pos, *rest], idx [b, n] -> [..., b, n, *rest]."""
    if pd == 0:
        raise ValueError("Per-example positions need a batch axis right before the position axis.")
    bd = pd - 1
    if idx.shape[0] != t.shape[bd]:
        raise ValueError(f"Per-example positions for {idx.shape[0]} examples, but the tensor has batch {t.shape[bd]}.")
    moved = t.movedim((bd, pd), (0, 1))  # [b, pos, ...]
    out = moved[torch.arange(idx.shape[0], device=t.device)[:, None], idx]  # [b, n, ...]
    return out.movedim((0, 1), (bd, pd))
