"""One house style for every chart: colour-blind-safe colours, wrapped titles with the n behind them,
legends outside the data, integer / categorical axes where the data are integers / categories; titles naming
model, layers and heads (:func:`describe`).

Colours: categorical traces use the Okabe–Ito palette (distinguishable with the common colour-vision
deficiencies); sequential maps use Viridis / Cividis (perceptually uniform, monotone in lightness, so they
survive greyscale print); signed differences use a diverging blue–red map centred at 0.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
SAFE, UNSAFE = "#0072B2", "#D55E00"  # the two classes everywhere
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"
TITLE_PX = 17   # plotly's default title font size
_CHAR_PX = 0.55  # mean glyph width / font size of the default sans-serif


def ellipsize(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, with ``…`` where it was cut (at a word if one is near)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[: max(1, limit - 1)]
    space = cut.rfind(" ")
    if space > limit * 0.6:
        cut = cut[:space]
    return cut.rstrip(" ,;:·-") + "…"


def wrap_title(text: str, width_px: float, font_px: float = TITLE_PX) -> str:
    """``text`` wrapped with ``<br>`` so that no line is wider than ``width_px`` (plotly never wraps titles:
    a long centred title is clipped on both sides). Existing ``<br>`` are kept."""
    lines: list[str] = []
    for part in str(text).split("<br>"):
        sup = part.startswith("<sup>") and part.endswith("</sup>")
        inner = part[5:-6] if sup else part
        chars = max(12, int(width_px / (font_px * (0.7 if sup else 1.0) * _CHAR_PX)))
        wrapped = textwrap.wrap(inner, chars, break_long_words=True, break_on_hyphens=False) or [""]
        lines += [f"<sup>{w}</sup>" for w in wrapped] if sup else wrapped
    return "<br>".join(lines)


def title_lines(text: str) -> int:
    return str(text).count("<br>") + 1 if text else 0


def with_n(title: str, n: int | str | None) -> str:
    """``title`` with ``(n = …)`` appended, naming how many examples are behind the figure."""
    return title if n is None else f"{title} (n = {n})"


def style_chart(fig: go.Figure, *, title: str, x_title: str, y_title: str, n: int | str | None = None,
                width: int = 820, height: int = 480, x_kind: str = "auto", y_kind: str = "auto",
                legend_title: str | None = None) -> go.Figure:
    """Apply the house style to a chart (bars, lines, histograms, a factor heatmap).

    ``x_kind`` / ``y_kind``: ``"category"`` (one tick per category, in the data's order), ``"integer"``
    (ticks at whole numbers only: layers, heads, N) or ``"auto"``. The legend sits in its own band between
    title and plot, so it never covers data; the title is wrapped to the figure's width.
    """
    text = wrap_title(with_n(title, n), width - 40)
    has_legend = sum(1 for t in fig.data if t.showlegend is not False and t.name) > 1 or (
        fig.layout.showlegend is True)
    subtitles = any(a.yref == "paper" and a.y is not None and a.y >= 1 for a in fig.layout.annotations)
    top = 30 + 24 * title_lines(text) + (34 if has_legend else 0) + (24 if subtitles else 0)
    fig.update_layout(
        template="plotly_white", colorway=list(OKABE_ITO), width=width, height=height,
        # plotly anchors a multi-line title by its first line: centre the block in its band instead
        title={"text": text, "x": 0.5, "xanchor": "center", "yref": "container", "yanchor": "middle",
               "y": 1 - (14 + 12 * title_lines(text)) / height},
        margin={"l": 80, "r": 40 if not _has_colorbar(fig) else 120, "t": top, "b": 70},
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02 + (34 / height if subtitles else 0),
                "yanchor": "bottom",
                "title": {"text": legend_title} if legend_title else None},
        showlegend=has_legend,
    )
    fig.update_xaxes(title={"text": x_title}, **_axis_kind(x_kind))
    fig.update_yaxes(title={"text": y_title}, **_axis_kind(y_kind))
    return fig


def _has_colorbar(fig: go.Figure) -> bool:
    return any(t.type == "heatmap" and t.showscale is not False for t in fig.data)


def _axis_kind(kind: str) -> dict[str, Any]:
    if kind == "category":
        return {"type": "category", "categoryorder": "trace"}
    if kind == "integer":
        return {"tickformat": "d", "dtick": 1, "tick0": 0}
    if kind != "auto":
        raise ValueError(f"axis kind must be 'auto', 'category' or 'integer', got {kind!r}")
    return {}


def constant_note(z: Any) -> str | None:
    """``"constant: every cell = v"`` when every finite value of ``z`` is the same (a flat colour is
    otherwise indistinguishable from a rendering failure), else ``None``."""
    import numpy as np

    v = np.asarray(z, dtype=np.float64)
    fin = v[np.isfinite(v)]
    if fin.size and float(fin.max() - fin.min()) == 0.0:
        return f"constant: every cell = {float(fin[0]):.4g}"
    return None


def degenerate_range(lo: float, hi: float) -> tuple[float, float]:
    """A colour range that plotly and matplotlib both draw without offset notation: ``(lo, hi)`` when
    ``hi > lo``, else a symmetric pad around the single value."""
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.1 or 1.0
    return lo - pad, lo + pad


def _ranges(xs: Sequence[int]) -> str:
    """``[0, 1, 2, 3, 7, 9, 10]`` -> ``"0–3, 7, 9–10"``."""
    vals = sorted(set(int(x) for x in xs))
    parts: list[str] = []
    start = prev = None
    for v in [*vals, None]:
        if start is not None and (v is None or v != prev + 1):
            parts.append(str(start) if start == prev else f"{start}–{prev}")
            start = None
        if v is not None and start is None:
            start = v
        prev = v
    return ", ".join(parts)


def describe(
    model_id: str,
    layers: int | str | Sequence[int] | None = None,
    heads: int | str | Sequence[int] | Sequence[tuple[int, int]] | None = None,
) -> str:
    """A figure title naming model, layers and heads.

    ``describe("llava-hf/llava-1.5-7b-hf", range(8, 16), [(8, 3), (9, 1)])`` ->
    ``"llava-hf/llava-1.5-7b-hf · layers 8–15 · 2 heads: L8H3, L9H1"``.
    """
    parts = [str(model_id)]
    for noun, value in (("layer", layers), ("head", heads)):
        if value is None:
            continue
        if isinstance(value, str):
            parts.append(f"{noun}s {value}")
        elif isinstance(value, int):
            parts.append(f"{noun} {value}")
        else:
            vs = list(value)
            plural = noun + ("s" if len(vs) != 1 else "")
            if noun == "head" and vs and isinstance(vs[0], (tuple, list)):
                named = ", ".join(f"L{int(lh[0])}H{int(lh[1])}" for lh in vs[:6])
                parts.append(f"{len(vs)} {plural}: {named}" + (", …" if len(vs) > 6 else ""))
            else:
                parts.append(f"{plural} {_ranges(vs)}")
    return " · ".join(parts)
