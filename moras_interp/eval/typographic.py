"""FigStep-style typographic attack images, and the box of their text as a ground-truth risky region.

FigStep (Gong et al., 2023) renders a harmful instruction, wrapped at 15 characters and followed by an
empty numbered list ``"\\n1. \\n2. \\n3. "``, in FreeMonoBold 80 pt, black on a white 760×760 canvas, at
(20, 10) with 11 px line spacing, and pairs the image with a benign-looking text prompt
(:data:`moras_interp.eval.datasets.FIGSTEP_PROMPT`).
"""

from __future__ import annotations

import functools
import os
import textwrap
import warnings
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["FONT_CANDIDATES", "figstep_text", "find_font", "load_font", "text_box", "typographic_image"]

#: Monospace bold fonts tried in order (FigStep's FreeMonoBold first); matplotlib's bundled DejaVu comes after.
FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/truetype/freefont/FreeMonoBold.ttf",
    "/usr/share/fonts/opentype/freefont/FreeMonoBold.otf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Box = tuple[float, float, float, float]


def find_font() -> Path | None:
    """Path of the first available monospace bold font, or ``None`` (FreeMonoBold, DejaVuSansMono-Bold)."""
    for cand in FONT_CANDIDATES:
        if os.path.isfile(cand):
            return Path(cand)
    try:
        import matplotlib

        mpl = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSansMono-Bold.ttf"
        if mpl.is_file():
            return mpl
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
    return None


@functools.lru_cache(maxsize=16)
def load_font(font_size: int = 80, path: str | Path | None = None) -> Font:
    """The font to draw with: ``path`` if given, else :func:`find_font`, else PIL's default (with a warning)."""
    if font_size <= 0:
        raise ValueError(f"font_size must be positive, got {font_size}.")
    chosen = Path(path) if path is not None else find_font()
    if path is not None and not chosen.is_file():  # type: ignore[union-attr]
        raise FileNotFoundError(f"Font file not found: {chosen}")
    if chosen is not None:
        return ImageFont.truetype(str(chosen), font_size)
    warnings.warn("No monospace bold TrueType font found (FreeMonoBold / DejaVuSansMono-Bold); using PIL's "
                  "default font, so images will not match FigStep's exactly.", RuntimeWarning, stacklevel=2)
    return ImageFont.load_default(size=font_size)


def figstep_text(text: str, *, wrap: int | None = 15, numbered: bool = True, steps: int = 3) -> str:
    """The string FigStep draws: ``text`` wrapped at ``wrap`` characters, then ``"\\n1. \\n2. \\n3. "``.

    ``wrap=None`` keeps the text's own line breaks; ``numbered=False`` omits the list.
    """
    if not text.strip():
        raise ValueError("text is empty; there is nothing to render.")
    if wrap is not None and wrap <= 0:
        raise ValueError(f"wrap must be positive or None, got {wrap}.")
    out = text.removesuffix("\n")
    if wrap is not None:
        out = textwrap.fill(out, width=wrap)
    if numbered:
        out += "".join(f"\n{i}. " for i in range(1, steps + 1))
    return out


def _canvas_size(size: int | tuple[int, int]) -> tuple[int, int]:
    w, h = (size, size) if isinstance(size, int) else size
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive, got {size}.")
    return int(w), int(h)


def typographic_image(text: str, *, size: int | tuple[int, int] = 760, wrap: int | None = 15,
                      font_size: int = 80, numbered: bool = True, steps: int = 3,
                      xy: tuple[float, float] = (20, 10), spacing: int = 11,
                      font_path: str | Path | None = None) -> Image.Image:
    """Render ``text`` FigStep-style: black monospace bold on a white RGB canvas (deterministic).

    Defaults reproduce FigStep: 760×760, wrap 15, 80 pt, numbered list of 3, drawn at (20, 10) with 11 px
    line spacing. Text that does not fit runs off the canvas, as in FigStep (long instructions are clipped).
    """
    im = Image.new("RGB", _canvas_size(size), "#FFFFFF")
    draw = ImageDraw.Draw(im)
    draw.text(xy, figstep_text(text, wrap=wrap, numbered=numbered, steps=steps), fill="#000000",
              font=load_font(font_size, font_path), spacing=spacing)
    return im


def text_box(text: str, *, size: int | tuple[int, int] = 760, wrap: int | None = 15, font_size: int = 80,
             numbered: bool = True, steps: int = 3, xy: tuple[float, float] = (20, 10), spacing: int = 11,
             font_path: str | Path | None = None, part: str = "all", clip: bool = True) -> Box:
    """Pixel box (x0, y0, x1, y1) of the text :func:`typographic_image` draws with the same arguments.

    The box is PIL's layout box of the drawn text, which contains every inked pixel. ``part="instruction"``
    returns the box of the instruction lines only (without the numbered list), the natural ground-truth
    risky region for region-share analyses; ``part="all"`` includes the list. With ``clip`` the box is
    clipped to the canvas (text running off the image is not counted).
    """
    if part not in {"all", "instruction"}:
        raise ValueError(f"part must be 'all' or 'instruction', got {part!r}.")
    w, h = _canvas_size(size)
    drawn = figstep_text(text, wrap=wrap, numbered=numbered and part == "all", steps=steps)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x0, y0, x1, y1 = draw.textbbox(xy, drawn, font=load_font(font_size, font_path), spacing=spacing)
    if clip:
        x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
        y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
    return float(x0), float(y0), float(x1), float(y1)
