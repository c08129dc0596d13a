"""Reading images as 8-bit RGB for the processors, never silently damaged (bit depth, transparency, colour
space), with errors that name the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image


class ImageConversionWarning(UserWarning):
    """An image was converted to 8-bit RGB with a loss (bit depth, transparency, colour space)."""


WHITE = (255, 255, 255)
"""The background transparent images are composited on."""


def to_rgb(im: Image.Image, source: str = "") -> Image.Image:
    """8-bit RGB for the processor, never silently damaged.

    * RGB, L, 1 and P without transparency: converted losslessly, no warning.
    * 16-bit grayscale (``I;16*``, or ``I`` with values in [0, 65535]): scaled by 255/65535 (``round(x / 257)``)
      instead of Pillow's clipping (which turns most of the image white); warns.
    * Transparency (RGBA, LA, PA, RGBa, P with a transparent colour) with any non-opaque pixel: composited on
      white (:data:`WHITE`): ``round(c·a + 255·(1 − a))`` with a = alpha/255; warns.
    * Float (``F``): values in [0, 1] are taken as intensities and scaled by 255, values in [0, 255] rounded
      (Pillow's own conversion turns a [0, 1] image black); NaN/Inf or values outside [0, 255] are an error; warns.
    * CMYK, YCbCr, LAB, HSV and other modes: Pillow's conversion; warns.

    ``source`` (a path or a description) names the image in warnings.
    """
    name = source or f"a PIL image ({im.width}×{im.height})"
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("L", "1") or (mode == "P" and "transparency" not in im.info):
        return im.convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{name}: 32-bit integer image with values in [{a.min()}, {a.max()}], outside the 16-bit "
                             "range this loader scales; convert it to 8-bit RGB yourself.")
        warnings.warn(f"{name}: 16-bit image (mode {mode}) scaled to 8 bits (x / 257, rounded).",
                      ImageConversionWarning, stacklevel=3)
        g = np.rint(a / 257.0).astype(np.uint8)
        return Image.fromarray(np.stack([g, g, g], axis=-1))
    if mode == "F":
        return _float_to_rgb(np.asarray(im, dtype=np.float64), name)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA")).astype(np.float64)
        alpha = rgba[..., 3:] / 255.0
        if bool((alpha >= 1.0).all()):
            return im.convert("RGBA").convert("RGB")
        warnings.warn(f"{name}: transparent image (mode {mode}) composited on a white background.",
                      ImageConversionWarning, stacklevel=3)
        out = rgba[..., :3] * alpha + np.asarray(WHITE, dtype=np.float64) * (1.0 - alpha)
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    warnings.warn(f"{name}: mode {mode} converted to 8-bit RGB by Pillow (colours or precision may change).",
                  ImageConversionWarning, stacklevel=3)
    return im.convert("RGB")


def _float_to_rgb(a: np.ndarray, name: str) -> Image.Image:
    """A float image [h, w] → 8-bit RGB: [0, 1] scaled by 255, [0, 255] rounded (see :func:`to_rgb`)."""
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name}: float image (mode F) holds NaN/Inf values; fix the image before loading it.")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise ValueError(f"{name}: float image (mode F) with values in [{lo:g}, {hi:g}], outside [0, 1] and "
                         "[0, 255]; convert it to 8-bit RGB yourself.")
    scale = 255.0 if hi <= 1.0 else 1.0
    how = "taken as [0, 1] and scaled to 8 bits (x · 255, rounded)" if scale > 1 else "rounded to 8 bits"
    warnings.warn(f"{name}: float image (mode F) with values in [{lo:g}, {hi:g}] {how}.", ImageConversionWarning,
                  stacklevel=4)
    g = np.rint(a * scale).astype(np.uint8)
    return Image.fromarray(np.stack([g, g, g], axis=-1))


def load_image(x: Image.Image | str | Path) -> Image.Image:
    """Opens a path or passes a PIL image through, as 8-bit RGB (see :func:`to_rgb` for lossy conversions)."""
    if isinstance(x, Image.Image):
        return to_rgb(x)
    p = Path(x)
    if not p.exists():
        raise FileNotFoundError(f"Image file not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            rgb = to_rgb(im, str(p))
            return rgb.copy() if rgb is im else rgb  # the file's image is closed on leaving the block
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # truncated, corrupt, not an image
        if isinstance(e, FileNotFoundError):
            raise
        raise ImageReadError(f"{p}: cannot read this image ({e}). Re-export or replace the file.") from e


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded (truncated, corrupt or not an image); names the file."""
