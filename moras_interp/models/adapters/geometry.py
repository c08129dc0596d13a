"""Pixel geometry of the common image-processor pipelines (pad -> resize -> center crop).

Each function returns, for a ViT patch grid laid over the processed image, the box every token covers
in the ORIGINAL image, in raster order: FloatTensor [rows*cols, 4] of (x0, y0, x1, y1).
"""

from __future__ import annotations

from typing import Any

import torch

from moras_interp.models.adapters.base import raster_boxes, to_original


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
