"""Exact overlap of token pixel boxes with a region (a box or a boolean / soft mask) of the original image.

The one home of box / patch / region overlap: attention region shares and viz overlays both use it.
"""

from __future__ import annotations

import numpy as np
import torch


def _cell_weights(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """[n_boxes, n]: length of [lo, hi] inside each unit pixel cell [c, c+1)."""
    c = torch.arange(n, dtype=torch.float64)[None, :]
    return (torch.minimum(hi[:, None], c + 1) - torch.maximum(lo[:, None], c)).clamp(min=0)


def overlap_fraction(boxes: torch.Tensor, image_size: tuple[int, int], *,
                     box: tuple[float, float, float, float] | None = None,
                     mask: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of each token box's area inside the region. float64 [n]; empty boxes give 0.

    ``box`` = (x0, y0, x1, y1) in original pixels (exact rectangle intersection); ``mask`` = bool
    [H, W] over original pixels (exact integration over unit pixel cells).
    """
    if (box is None) == (mask is None):
        raise ValueError("Give exactly one of box=(x0, y0, x1, y1) or mask=[H, W] bool array.")
    b = boxes.to(torch.float64)
    area = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0))
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"Region box {box} is empty: expected x0 < x1 and y0 < y1 in pixels.")
        iw = (torch.minimum(b[:, 2], torch.tensor(x1)) - torch.maximum(b[:, 0], torch.tensor(x0))).clamp(min=0)
        ih = (torch.minimum(b[:, 3], torch.tensor(y1)) - torch.maximum(b[:, 1], torch.tensor(y0))).clamp(min=0)
        inside = iw * ih
    else:
        m = torch.as_tensor(np.asarray(mask), dtype=torch.float64)
        w, h = image_size
        if tuple(m.shape) != (h, w):
            raise ValueError(f"Region mask has shape {tuple(m.shape)}, the image is {h}x{w} (H, W).")
        wy = _cell_weights(b[:, 1], b[:, 3], h)
        wx = _cell_weights(b[:, 0], b[:, 2], w)
        inside = ((wy @ m) * wx).sum(-1)
    return torch.where(area > 0, inside / area.clamp(min=1e-12), torch.zeros_like(area))


def region_area_share(image_size: tuple[int, int], *, box: tuple[float, float, float, float] | None = None,
                      mask: np.ndarray | torch.Tensor | None = None) -> float:
    """Area of the region as a fraction of the image."""
    w, h = image_size
    if box is not None:
        x0, y0, x1, y1 = box
        return max(0.0, min(x1, w) - max(x0, 0)) * max(0.0, min(y1, h) - max(y0, 0)) / (w * h)
    return float(np.asarray(mask, dtype=bool).mean())
