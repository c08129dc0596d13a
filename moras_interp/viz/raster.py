"""Rasterise per-token scores onto the ORIGINAL image, and measure token/region overlap.

Geometry convention (shared with :class:`~moras_interp.models.layout.PatchGrid`): a box
``(x0, y0, x1, y1)`` is in continuous original-image pixel coordinates, pixel ``(row i, col j)`` is the
unit cell ``[j, j+1) x [i, i+1)``, the y axis points down. Boxes may be fractional (a 336-px model
input resized from a 500-px image gives patches 20.83 px wide); every function here integrates
exactly over pixel cells, so nothing is rounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from moras_interp.models.layout import ImageLayout

Box = tuple[float, float, float, float]
GridSelector = str | int | Sequence[str | int] | None

REDUCTIONS = ("mean", "max", "mass")


def _axis_weights(lo: float, hi: float, n: int) -> tuple[int, np.ndarray]:
    """Overlap lengths of the interval ``[lo, hi)`` with unit cells ``[k, k+1)``, ``0 <= k < n``.

    Returns ``(k0, w)``: ``w[i]`` is the overlap with cell ``k0 + i`` (empty ``w`` if none).
    """
    lo, hi = max(float(lo), 0.0), min(float(hi), float(n))
    if not hi > lo:
        return 0, np.zeros(0)
    k0, k1 = math.floor(lo), min(math.ceil(hi), n)
    edges = np.arange(k0, k1, dtype=np.float64)
    w = np.minimum(hi, edges + 1.0) - np.maximum(lo, edges)
    return k0, np.clip(w, 0.0, 1.0)


def _box_cells(box: Sequence[float], width: int, height: int) -> tuple[slice, slice, np.ndarray] | None:
    """Pixel-cell overlap areas of one box: ``(rows, cols, area[h, w])`` or ``None`` if it covers none."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, wx = _axis_weights(x0, x1, width)
    cy, wy = _axis_weights(y0, y1, height)
    if wx.size == 0 or wy.size == 0:
        return None
    return slice(cy, cy + wy.size), slice(cx, cx + wx.size), np.outer(wy, wx)


def _as_numpy(x: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _select_grids(image: ImageLayout, grid: GridSelector) -> list[int]:
    """Indices of the grids named by ``grid`` (index, exact name, or name prefix such as ``"tile"``)."""
    if grid is None:
        return list(range(len(image.grids)))
    wanted = [grid] if isinstance(grid, (str, int)) else list(grid)
    names = [g.name for g in image.grids]
    out: list[int] = []
    for w in wanted:
        if isinstance(w, int):
            if not -len(names) <= w < len(names):
                raise IndexError(f"grid index {w} out of range for {len(names)} grids {names}")
            hits = [w % len(names)]
        else:
            hits = [i for i, n in enumerate(names) if n == w] or [
                i for i, n in enumerate(names) if n.startswith(w)
            ]
        if not hits:
            raise KeyError(f"no grid named {w!r}; grids are {names}")
        out.extend(h for h in hits if h not in out)
    return sorted(out)


def _align_scores(scores: np.ndarray, image: ImageLayout) -> np.ndarray:
    """Scores aligned with ``image.grid_positions()``; also accepts one score per ``image.positions``."""
    n_grid = sum(g.rows * g.cols for g in image.grids)
    if scores.shape == (n_grid,):
        return scores
    if scores.shape == (image.n_tokens,):
        index = {int(p): i for i, p in enumerate(image.positions.tolist())}
        return scores[[index[int(p)] for p in image.grid_positions().tolist()]]
    raise ValueError(
        f"scores has shape {scores.shape}; expected ({n_grid},) aligned with image.grid_positions() "
        f"or ({image.n_tokens},) aligned with image.positions"
    )


def paint_boxes(
    scores: torch.Tensor | np.ndarray | Sequence[float],
    boxes: torch.Tensor | np.ndarray,
    image_size: tuple[int, int],
    *,
    reduce: str = "mean",
) -> np.ndarray:
    """Paint scores [n] over their boxes [n, 4] on a ``(W, H)`` canvas; returns float64 [H, W].

    ``reduce``: ``"mean"`` — area-weighted mean of the tokens covering each pixel,
    ``sum(score * overlap) / sum(overlap)``; ``"max"`` — max over tokens with positive overlap;
    ``"mass"`` — each token spreads its score uniformly over its box
    (``sum(score * overlap / box_area)``), so the map sums to the total score of the painted tokens.
    Pixels covered by no token are NaN. Tokens with non-finite scores or empty boxes are skipped.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    s = _as_numpy(scores).reshape(-1)
    b = _as_numpy(boxes).reshape(-1, 4)
    if s.shape[0] != b.shape[0]:
        raise ValueError(f"{s.shape[0]} scores but {b.shape[0]} boxes")
    width, height = int(image_size[0]), int(image_size[1])
    num = np.zeros((height, width))
    den = np.zeros((height, width))
    best = np.full((height, width), -np.inf)
    for value, box in zip(s, b):
        if not np.isfinite(value):
            continue
        cells = _box_cells(box, width, height)
        if cells is None:
            continue
        rows, cols, area = cells
        den[rows, cols] += area
        if reduce == "mean":
            num[rows, cols] += value * area
        elif reduce == "mass":
            num[rows, cols] += value * area / ((box[2] - box[0]) * (box[3] - box[1]))
        else:
            view = best[rows, cols]
            np.maximum(view, np.where(area > 0, value, -np.inf), out=view)
    covered = den > 0
    out = np.full((height, width), np.nan)
    if reduce == "mean":
        out[covered] = num[covered] / den[covered]
    elif reduce == "mass":
        out[covered] = num[covered]
    else:
        out[covered] = best[covered]
    return out


def token_map(
    scores: torch.Tensor | np.ndarray | Sequence[float],
    image: ImageLayout,
    *,
    grid: GridSelector = None,
    reduce: str = "mean",
) -> np.ndarray:
    """Paint one score per image token over the ORIGINAL image; returns float64 [H, W].

    Args:
        scores: [n_grid_tokens], aligned with ``image.grid_positions()`` (grid after grid). A vector of
            length ``image.n_tokens`` aligned with ``image.positions`` (separators included) is also
            accepted and re-ordered.
        image: the :class:`ImageLayout` whose grids' ``boxes`` give each token's pixel box.
        grid: ``None`` uses every grid: where several grids cover a pixel (LLaVA-NeXT base + hi-res,
            Idefics3 tiles + global image) the area-weighted scores are averaged, each full cover
            weighing equally. An ``int`` (grid index), a name (``"base"``), a name prefix (``"tile"``
            selects every tile) or a list of these restricts painting to those grids.
        reduce: ``"mean"`` (area-weighted average, default), ``"max"`` or ``"mass"`` (score spread
            uniformly over its box; the map sums to the painted tokens' total) — see :func:`paint_boxes`.

    Returns:
        ndarray [H, W] with ``(W, H) = image.image_size``; NaN where no selected token covers a pixel.
    """
    s = _align_scores(_as_numpy(scores).reshape(-1), image)
    chosen = _select_grids(image, grid)
    offsets = np.cumsum([0] + [g.rows * g.cols for g in image.grids])
    keep = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in chosen]) if chosen else []
    keep = np.asarray(keep, dtype=np.int64)
    boxes = _as_numpy(image.grid_boxes()).reshape(-1, 4)
    return paint_boxes(s[keep], boxes[keep], image.image_size, reduce=reduce)


def region_mask(
    image_size: tuple[int, int],
    box: Box | None = None,
    mask: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Boolean region mask [H, W] for an image of ``image_size = (W, H)``.

    ``box = (x0, y0, x1, y1)`` selects the pixels whose CENTRE lies inside the box (exact for integer
    boxes); ``mask`` is any [H, W] array (non-zero = inside). Both given → their intersection; neither
    → the whole image.
    """
    width, height = int(image_size[0]), int(image_size[1])
    out = np.ones((height, width), dtype=bool)
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if m.shape != (height, width):
            raise ValueError(f"mask has shape {m.shape}, expected (H, W) = {(height, width)}")
        out &= m.astype(bool)
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        cx = np.arange(width) + 0.5
        cy = np.arange(height) + 0.5
        out &= ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
    return out


def token_region_overlap(
    boxes: torch.Tensor | np.ndarray,
    region_mask: np.ndarray | torch.Tensor,
) -> torch.Tensor:
    """Fraction of each token box's area that lies inside a pixel region.

    Args:
        boxes: [n, 4] ``(x0, y0, x1, y1)`` boxes in original-image pixels (fractional allowed).
        region_mask: [H, W] bool (or 0/1, or soft weights in [0, 1]) region over pixel cells.

    Returns:
        float32 Tensor [n]: ``integral(box ∩ region) / area(box)``, integrated exactly over pixel
        cells; 0 for empty boxes. Parts of a box outside the image count as outside the region.
    """
    from moras_interp.models.region import overlap_fraction

    m = region_mask.detach().cpu().numpy() if isinstance(region_mask, torch.Tensor) else region_mask
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"region_mask must be [H, W], got shape {m.shape}")
    b = torch.as_tensor(_as_numpy(boxes).reshape(-1, 4))
    return overlap_fraction(b, (m.shape[1], m.shape[0]), mask=m).to(torch.float32)
