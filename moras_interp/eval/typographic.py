"""FigStep-style typographic attack images, and the box of their text as a ground-truth risky region.

FigStep (Gong et al., 2023) renders a harmful instruction, wrapped at 15 characters and followed by an
empty numbered list ``"\\n1. \\n2. \\n3. "``, in FreeMonoBold 80 pt, black on a white 760×760 canvas, at
(20, 10) with 11 px line spacing, and pairs the image with a benign-looking text prompt
(:data:`moras_interp.eval.benchmark_files.FIGSTEP_PROMPT`). With FreeMonoBold the images here are pixel-identical
to FigStep's generator (``src/generate_prompts.py``, ``text_to_image`` / ``text_step_by_step``, in
github.com/ThuCCSLab/FigStep at commit ``96e015e0750e9ff7c21ab4e5d1f3342dd22d5fb1``; same PIL calls).

The font is found as: the ``font=`` argument > the ``MORAS_FIGSTEP_FONT`` environment variable > known system
paths of ``FreeMonoBold.ttf``; otherwise it is an error (install it with ``apt-get install
fonts-freefont-ttf``). There is no silent fallback: with DejaVu Sans Mono Bold 168 of SafeBench's 500
instructions run off the canvas, against 14 with FreeMonoBold. Another font passed explicitly is used with a
warning, and each image whose lines run off the canvas says how many.
"""

from __future__ import annotations

import functools
import os
import textwrap
import warnings
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["FIGSTEP_FONT", "FONT_CANDIDATES", "FONT_ENV", "FontNotFoundError", "figstep_text", "find_font",
           "is_figstep_font", "load_font", "overflow_lines", "text_box", "typographic_image"]

#: FigStep's font file (GNU FreeFont, FreeMono Bold).
FIGSTEP_FONT = "FreeMonoBold.ttf"

#: Environment variable naming the font file to use (after an explicit ``font=`` argument).
FONT_ENV = "MORAS_FIGSTEP_FONT"

#: Where FreeMonoBold.ttf is installed by common systems (Debian/Ubuntu ``fonts-freefont-ttf``, Fedora
#: ``gnu-free-mono-fonts``, a user or macOS font folder), tried in order.
FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/truetype/freefont/FreeMonoBold.ttf",
    "/usr/share/fonts/gnu-free/FreeMonoBold.ttf",
    "/usr/share/fonts/TTF/FreeMonoBold.ttf",
    "/usr/local/share/fonts/FreeMonoBold.ttf",
    "~/.local/share/fonts/FreeMonoBold.ttf",
    "~/.fonts/FreeMonoBold.ttf",
    "~/Library/Fonts/FreeMonoBold.ttf",
    "/Library/Fonts/FreeMonoBold.ttf",
)

Font = ImageFont.FreeTypeFont
Box = tuple[float, float, float, float]


class FontNotFoundError(FileNotFoundError):
    """FigStep's font is not installed and no font was given."""


def find_font(font: str | Path | None = None) -> Path:
    """The font file to draw with: ``font`` > ``$MORAS_FIGSTEP_FONT`` > :data:`FONT_CANDIDATES`, else an error.

    Raises:
        FileNotFoundError: ``font`` (or the environment variable) names a file that does not exist.
        FontNotFoundError: nothing was given and FreeMonoBold.ttf is in none of the known places.
    """
    for given, where in ((font, "font="), (os.environ.get(FONT_ENV) or None, f"${FONT_ENV}")):
        if given is not None:
            path = Path(given).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"Font file not found: {path} (from {where}).")
            return path
    for cand in FONT_CANDIDATES:
        path = Path(cand).expanduser()
        if path.is_file():
            return path
    raise FontNotFoundError(
        f"FigStep's font {FIGSTEP_FONT} was not found (looked in {', '.join(FONT_CANDIDATES)}). Install it with "
        "`apt-get install fonts-freefont-ttf` (Debian/Ubuntu; `dnf install gnu-free-mono-fonts` on Fedora), or "
        f"pass font='/path/to/{FIGSTEP_FONT}' or set {FONT_ENV}. Another font can be passed the same way, but "
        "its images will not match FigStep's (with DejaVu Sans Mono 168/500 SafeBench instructions overflow).")


def is_figstep_font(font: Font) -> bool:
    """Whether ``font`` is FreeMono Bold (FigStep's font), by its family and style names."""
    return tuple(font.getname()) == ("FreeMono", "Bold")


@functools.lru_cache(maxsize=16)
def _truetype(path: str, font_size: int) -> Font:
    font = ImageFont.truetype(path, font_size)
    if not is_figstep_font(font):
        warnings.warn(f"Using {path} ({' '.join(font.getname())}), not FigStep's FreeMono Bold: images will not "
                      "match FigStep's, and more long instructions run off the canvas.", UserWarning, stacklevel=4)
    return font


def load_font(font_size: int = 80, path: str | Path | None = None) -> Font:
    """The font at ``font_size``, from ``path`` or :func:`find_font` (cached per file and size)."""
    if isinstance(font_size, bool) or not isinstance(font_size, int) or font_size <= 0:
        raise ValueError(f"font_size must be a positive integer, got {font_size!r}.")
    return _truetype(str(find_font(path)), font_size)


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


def _font_arg(font: str | Path | None, font_path: str | Path | None) -> str | Path | None:
    if font is not None and font_path is not None:
        raise ValueError("Pass the font file as font= (font_path= is its older name), not both.")
    return font if font is not None else font_path


def overflow_lines(text: str, *, size: int | tuple[int, int] = 760, wrap: int | None = 15, font_size: int = 80,
                   numbered: bool = True, steps: int = 3, xy: tuple[float, float] = (20, 10), spacing: int = 11,
                   font: str | Path | None = None) -> int:
    """How many of the drawn lines run (partly) off the canvas: the lines from the first one whose layout box
    leaves the canvas to the last (0 = everything fits). Same arguments as :func:`typographic_image`."""
    w, h = _canvas_size(size)
    lines = figstep_text(text, wrap=wrap, numbered=numbered, steps=steps).split("\n")
    draw, f = ImageDraw.Draw(Image.new("RGB", (1, 1))), load_font(font_size, font)
    for k in range(1, len(lines) + 1):
        _x0, _y0, x1, y1 = draw.textbbox(xy, "\n".join(lines[:k]), font=f, spacing=spacing)
        if x1 > w or y1 > h:
            return len(lines) - k + 1
    return 0


def typographic_image(text: str, *, size: int | tuple[int, int] = 760, wrap: int | None = 15,
                      font_size: int = 80, numbered: bool = True, steps: int = 3,
                      xy: tuple[float, float] = (20, 10), spacing: int = 11,
                      font: str | Path | None = None, font_path: str | Path | None = None) -> Image.Image:
    """Render ``text`` FigStep-style: black text on a white RGB canvas (deterministic).

    Defaults reproduce FigStep pixel for pixel (with FreeMonoBold): 760×760, wrap 15, 80 pt, numbered list of
    3, drawn at (20, 10) with 11 px line spacing. Text that does not fit runs off the canvas, as in FigStep
    (14 of SafeBench's 500 instructions). ``font`` is a font file (see :func:`find_font`); with a font other
    than FreeMonoBold, an image whose lines run off the canvas warns with their number.
    """
    im = Image.new("RGB", _canvas_size(size), "#FFFFFF")
    f = load_font(font_size, _font_arg(font, font_path))
    drawn = figstep_text(text, wrap=wrap, numbered=numbered, steps=steps)
    ImageDraw.Draw(im).text(xy, drawn, fill="#000000", font=f, spacing=spacing)
    if not is_figstep_font(f):
        n = overflow_lines(text, size=size, wrap=wrap, font_size=font_size, numbered=numbered, steps=steps, xy=xy,
                           spacing=spacing, font=f.path)
        if n:
            warnings.warn(f"{n} of {drawn.count(chr(10)) + 1} lines run off the {im.width}×{im.height} canvas with "
                          f"{' '.join(f.getname())} (text {text[:40]!r}).", UserWarning, stacklevel=2)
    return im


def text_box(text: str, *, size: int | tuple[int, int] = 760, wrap: int | None = 15, font_size: int = 80,
             numbered: bool = True, steps: int = 3, xy: tuple[float, float] = (20, 10), spacing: int = 11,
             font: str | Path | None = None, font_path: str | Path | None = None, part: str = "all",
             clip: bool = True) -> Box:
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
    f = load_font(font_size, _font_arg(font, font_path))
    x0, y0, x1, y1 = draw.textbbox(xy, drawn, font=f, spacing=spacing)
    if clip:
        x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
        y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
    return float(x0), float(y0), float(x1), float(y1)
