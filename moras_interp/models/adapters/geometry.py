"""Pixel geometry of the common image-processor pipelines, shared by the adapters.

* :func:`clip_pipeline_boxes`: pad to square -> resize -> center crop (CLIP/SigLIP processors; LLaVA,
  Gemma3, PaliGemma).
* :func:`tiled_grids`: squash to a tile canvas -> tiles + overview image (Idefics3/SmolVLM, InternVL).

Boxes are, for each token of a patch grid, the region it covers in the ORIGINAL image, in raster order:
FloatTensor [rows*cols, 4] of (x0, y0, x1, y1), in continuous pixel coordinates (y down).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from moras_interp.models.adapters.base import GridSpec, raster_boxes, to_original


def _size_get(size: Any, key: str) -> int | None:
    if size is None:
        return None
    v = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(v) if v is not None else None


def resized_size(size: Any, width: int, height: int) -> tuple[int, int]:
    """(width, height) after an HF ``resize`` with ``size`` = {shortest_edge} or {height, width}.

    Mirrors ``transformers.image_transforms.get_resize_output_image_size`` (``int()`` truncation of the
    long edge) for ``shortest_edge``; ``height``/``width`` squash the image to that size.
    """
    se = _size_get(size, "shortest_edge")
    if se is not None:
        if width <= height:
            return se, int(se * height / width)
        return int(se * width / height), se
    h, w = _size_get(size, "height"), _size_get(size, "width")
    if h is None or w is None:
        raise ValueError(f"Unsupported resize size {size!r}: expected shortest_edge or height+width.")
    return w, h


def clip_pipeline_boxes(image_processor: Any, width: int, height: int, rows: int, cols: int) -> torch.Tensor:
    """Boxes of a rows×cols grid over the output of a CLIP/SigLIP-style processor.

    Handles ``do_pad`` (LLaVA's pad-to-square, centered), ``do_resize`` with shortest edge (aspect kept)
    or fixed height/width (squash), and ``do_center_crop``. Returns float32 [rows*cols, 4].
    """
    ip = image_processor
    pad_x = pad_y = 0
    w0, h0 = width, height
    if getattr(ip, "do_pad", False):
        side = max(width, height)
        if width > height:
            pad_y = (side - height) // 2
        elif height > width:
            pad_x = (side - width) // 2
        w0 = h0 = side
    w1, h1 = resized_size(ip.size, w0, h0) if getattr(ip, "do_resize", True) else (w0, h0)
    left = top = 0
    frame_w, frame_h = w1, h1
    if getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None) is not None:
        ch, cw = _size_get(ip.crop_size, "height"), _size_get(ip.crop_size, "width")
        top, left = (h1 - ch) // 2, (w1 - cw) // 2
        frame_w, frame_h = cw, ch
    boxes = raster_boxes(rows, cols, frame_w / cols, frame_h / rows)
    return to_original(boxes, scale_x=w1 / w0, scale_y=h1 / h0, shift_x=left, shift_y=top,
                       pad_x=pad_x, pad_y=pad_y, width=width, height=height)


def tiled_grids(width: int, height: int, tile_rows: int, tile_cols: int, side: int, *,
                overview: str | None) -> list[GridSpec]:
    """Grids of a "squash to a tile canvas, cut into tiles, add a downscaled overview" pipeline.

    Idefics3/SmolVLM and InternVL resize the whole image (aspect not kept) to ``tile_rows × tile_cols``
    tiles, so tile ``(r, c)`` covers exactly the ``(r, c)`` cell of a ``tile_rows × tile_cols`` partition
    of the ORIGINAL image; each tile becomes a ``side × side`` token grid (row-major after pixel
    shuffle), tiles follow each other row-major in the sequence, and the overview (Idefics3's global
    image, InternVL's thumbnail: the whole image squashed to one tile) comes last. With no tiles
    (``tile_rows == tile_cols == 0``) there is only the overview.

    Args:
        width, height: original image size in pixels.
        tile_rows, tile_cols: tile layout (0, 0 for an image that was not split).
        side: tokens per tile side (``sqrt(tokens per tile)``).
        overview: name of the overview grid, or None when the pipeline adds none.

    Returns:
        The grids in sequence order; ``offsets`` index this image's image tokens consecutively and every
        ``boxes`` is float32 [side*side, 4] in original pixels.
    """
    n = side * side
    grids: list[GridSpec] = []
    tw, th = width / max(tile_cols, 1), height / max(tile_rows, 1)
    for r in range(tile_rows):
        for c in range(tile_cols):
            boxes = raster_boxes(side, side, tw / side, th / side, c * tw, r * th).to(torch.float32)
            k = len(grids)
            grids.append(GridSpec(f"tile r{r} c{c}", side, side, boxes, torch.arange(k * n, (k + 1) * n)))
    if overview is not None:
        k = len(grids)
        boxes = raster_boxes(side, side, width / side, height / side).to(torch.float32)
        grids.append(GridSpec(overview, side, side, boxes, torch.arange(k * n, (k + 1) * n)))
    return grids


def square_side(n: int, what: str) -> int:
    """``sqrt(n)`` for a square token grid; a clear error if ``n`` is not a square."""
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{what}: {n} tokens do not form a square grid; this adapter assumes square tiles.")
    return g
