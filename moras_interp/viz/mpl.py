"""Browser-free renderer: draw a plotly figure with matplotlib (Agg), for PNG export.

Design: the figure builders in :mod:`moras_interp.viz.figures` produce ONLY plotly figures, restricted
to a small vocabulary — ``Image`` and ``Heatmap`` traces on cartesian axes, ``rect`` shapes,
paper-referenced annotations (subplot titles), the layout title, colourbars, axis domains, ranges,
``scaleanchor`` (aspect) and axis titles. This module interprets that vocabulary, so the PNG shows the
same data with the same geometry as the HTML, including edits the user makes to the figure afterwards
(``fig.update_layout(title=...)``, extra shapes), and no figure logic is written twice. Anything outside
the vocabulary (other trace types, lines, legends) is skipped.

Sizes follow kaleido: the canvas is ``width x height`` layout pixels, multiplied by ``scale``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import plotly.graph_objects as go
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from moras_interp.viz.mpl_charts import draw_charts
from moras_interp.viz.mpl_util import _arr, _cmap, _color, _edges, _image_pixels, _text, _zrange

_DEFAULT_MARGIN = {"l": 80, "r": 80, "t": 100, "b": 80}
_PT = 0.72  # points per layout pixel (the canvas has 100 dpi per unit of scale)


class _Canvas:
    """Maps plotly paper / domain coordinates to matplotlib figure fractions."""

    def __init__(self, fig: go.Figure, width: int, height: int, scale: float) -> None:
        self.fig, self.w, self.h = fig, width, height
        self.mfig = Figure(figsize=(width / 100, height / 100), dpi=100 * scale, facecolor="white")
        FigureCanvasAgg(self.mfig)
        m = fig.layout.margin
        self.m = {k: float(getattr(m, k) if getattr(m, k) is not None else v) for k, v in _DEFAULT_MARGIN.items()}
        self.axes: dict[tuple[str, str], Any] = {}
        self.extent: dict[tuple[str, str], list[float]] = {}
        self.cats: dict[tuple[str, str], list[str]] = {}  # ("x" | "y", axis id) -> heatmap categories

    def paper(self, x: float, y: float) -> tuple[float, float]:
        pw, ph = self.w - self.m["l"] - self.m["r"], self.h - self.m["t"] - self.m["b"]
        return (self.m["l"] + x * pw) / self.w, (self.m["b"] + y * ph) / self.h

    def ax(self, xid: str, yid: str) -> Any:
        key = (xid, yid)
        if key not in self.axes:
            xa, ya = self.layout_axis("x", xid), self.layout_axis("y", yid)
            dx, dy = list(xa.domain or (0, 1)), list(ya.domain or (0, 1))
            x0, y0 = self.paper(dx[0], dy[0])
            x1, y1 = self.paper(dx[1], dy[1])
            self.axes[key] = self.mfig.add_axes((x0, y0, x1 - x0, y1 - y0))
            self.extent[key] = [np.inf, -np.inf, np.inf, -np.inf]
        return self.axes[key]

    def layout_axis(self, letter: str, ident: str) -> Any:
        return self.fig.layout[f"{letter}axis{ident[1:]}"]

    def grow(self, key: tuple[str, str], x0: float, x1: float, y0: float, y1: float) -> None:
        e = self.extent[key]
        e[:] = [min(e[0], x0, x1), max(e[1], x0, x1), min(e[2], y0, y1), max(e[3], y0, y1)]


SUPPORTED = ("image", "heatmap", "scatter", "bar", "histogram")


class UnsupportedFigure(ValueError):
    """The matplotlib fallback cannot draw this figure faithfully (a trace type or option it does not know)."""


def _categories(v: Any) -> list[str] | None:
    """Category labels when the coordinates are not all numbers (strings, None), else ``None``."""
    if v is None:
        return None
    vals = list(v) if not isinstance(v, np.ndarray) else v.tolist()
    if all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool) for x in vals):
        return None
    return ["None" if x is None else str(x) for x in vals]


def _cell_text(ax: Any, z: np.ndarray, tr: Any, xe: tuple[float, float], ye: tuple[float, float]) -> None:
    """Write each cell's value (plotly ``texttemplate="%{z:.3g}"``-style) at its centre."""
    m = re.search(r"%\{z(?::([^}]*))?\}", str(tr.texttemplate))
    fmt = (m.group(1).replace("~", "") if m and m.group(1) else ".3g") if m else None
    if fmt is None:
        return
    ny, nx = z.shape
    for i in range(ny):
        for j in range(nx):
            if np.isfinite(z[i, j]):
                x = xe[0] + (j + 0.5) * (xe[1] - xe[0]) / nx
                y = ye[0] + (i + 0.5) * (ye[1] - ye[0]) / ny
                ax.text(x, y, format(float(z[i, j]), fmt), ha="center", va="center", fontsize=12 * _PT,
                        color="white", zorder=6)


def _draw_traces(cv: _Canvas) -> None:
    for tr in cv.fig.data:
        if tr.type not in ("image", "heatmap"):
            continue
        key = (tr.xaxis or "x", tr.yaxis or "y")
        ax = cv.ax(*key)
        if tr.type == "image":
            px = _image_pixels(tr)
            xe = _edges(px.shape[1], tr.x0, tr.dx, None)
            ye = _edges(px.shape[0], tr.y0, tr.dy, None)
            ax.imshow(px, extent=(*xe, *ye), origin="lower", interpolation="nearest", aspect="auto")
        else:
            z = _arr(tr.z)
            if z.dtype == object:  # None cells (e.g. a pivot's missing combination) are gaps
                z = np.vectorize(lambda v: np.nan if v is None else float(v), otypes=[np.float64])(z)
            z = z.astype(np.float64)
            xc, yc = _categories(tr.x), _categories(tr.y)
            xe = (-0.5, z.shape[1] - 0.5) if xc is not None else _edges(z.shape[1], tr.x0, tr.dx, tr.x)
            ye = (-0.5, z.shape[0] - 0.5) if yc is not None else _edges(z.shape[0], tr.y0, tr.dy, tr.y)
            for letter, cats in (("x", xc), ("y", yc)):
                if cats is not None:
                    cv.cats[(letter, key[0] if letter == "x" else key[1])] = cats
            lo, hi = _zrange(tr, z)
            alpha = 1.0 if tr.opacity is None else float(tr.opacity)
            im = ax.imshow(np.ma.masked_invalid(z), extent=(*xe, *ye), origin="lower", cmap=_cmap(tr),
                           vmin=lo, vmax=hi, alpha=alpha, interpolation="nearest", aspect="auto")
            if tr.texttemplate:
                _cell_text(ax, z, tr, xe, ye)
            if tr.showscale is not False:
                _colorbar(cv, im, tr)
        cv.grow(key, *xe, *ye)


def _colorbar(cv: _Canvas, im: Any, tr: Any) -> None:
    """Plotly's default colourbar: left edge at paper x=1.02 (+10 px pad), 30 px thick, full height
    minus 10 px padding at each end."""
    cb_x = 1.02 if tr.colorbar.x is None else float(tr.colorbar.x)
    x_left, y_bot = cv.paper(cb_x, 0.0)
    _, y_top = cv.paper(cb_x, 1.0)
    pad_x, pad_y = 10 / cv.w, 10 / cv.h
    thick = float(tr.colorbar.thickness or 30) / cv.w
    cax = cv.mfig.add_axes((x_left + pad_x, y_bot + pad_y, thick * 0.8, y_top - y_bot - 2 * pad_y))
    cb = cv.mfig.colorbar(im, cax=cax)
    cb.solids.set_alpha(1.0)
    cax.tick_params(labelsize=12 * _PT)
    label = _text(tr.colorbar.title)
    if label and tr.colorbar.title.side == "right":
        cb.set_label(label, fontsize=14 * _PT, parse_math=False)
    elif label:
        cax.set_title(label, fontsize=12 * _PT, loc="left", pad=6, parse_math=False)


def _style_axes(cv: _Canvas) -> None:
    for (xid, yid), ax in cv.axes.items():
        xa, ya = cv.layout_axis("x", xid), cv.layout_axis("y", yid)
        e = cv.extent[(xid, yid)]
        for a, lim, setter in ((xa, e[:2], ax.set_xlim), (ya, e[2:], ax.set_ylim)):
            if a.range is not None:
                setter(float(a.range[0]), float(a.range[1]))
            elif np.isfinite(lim).all():
                setter(*(lim[::-1] if a.autorange == "reversed" else lim))
        if ya.scaleanchor == xid:
            ax.set_aspect(float(ya.scaleratio or 1.0), adjustable="box", anchor="C")
        for a, which in ((xa, "x"), (ya, "y")):
            label = _text(a.title)
            if label:
                (ax.set_xlabel if which == "x" else ax.set_ylabel)(label, fontsize=14 * _PT,
                                                                  parse_math=False)
            ident = xid if which == "x" else yid
            if (which, ident) in cv.cats:
                labels = cv.cats[(which, ident)]
                (ax.set_xticks if which == "x" else ax.set_yticks)(range(len(labels)), labels=labels)
            elif a.tickvals is not None and a.ticktext is not None:
                (ax.set_xticks if which == "x" else ax.set_yticks)(
                    [float(v) for v in a.tickvals], labels=[_text(t) for t in a.ticktext])
            elif a.dtick is not None and float(a.dtick) == 1 and a.type != "category":
                (ax.xaxis if which == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))
            if a.showticklabels is False:
                ax.tick_params(axis=which, labelbottom=False, labelleft=False, length=0)
            else:
                ax.tick_params(axis=which, labelsize=12 * _PT)
        for spine in ax.spines.values():
            spine.set_linewidth(0.6)


def _draw_shapes(cv: _Canvas) -> None:
    for sh in cv.fig.layout.shapes:
        if sh.type == "line" and str(sh.xref or "").endswith(" domain"):  # add_hline
            key = (str(sh.xref).split()[0], sh.yref or "y")
            if key in cv.axes:
                ls = {"dash": "--", "dot": ":", "dashdot": "-."}.get(sh.line.dash or "solid", "-")
                cv.axes[key].axhline(float(sh.y0), color=_color(sh.line.color, "#444"), linestyle=ls,
                                     linewidth=float(sh.line.width or 2) * _PT, zorder=4)
            continue
        if (sh.type or "rect") != "rect":
            raise UnsupportedFigure(f"the matplotlib fallback draws rect shapes and horizontal lines, not a "
                                    f"{sh.type!r} shape with xref={sh.xref!r}; install a Chromium for kaleido.")
        key = (sh.xref or "x", sh.yref or "y")
        if key not in cv.axes:
            continue
        x0, x1, y0, y1 = (float(v) for v in (sh.x0, sh.x1, sh.y0, sh.y1))
        fill = _color(sh.fillcolor, "none") if sh.fillcolor else (0, 0, 0, 0)
        cv.axes[key].add_patch(Rectangle(
            (min(x0, x1), min(y0, y1)), abs(x1 - x0), abs(y1 - y0), facecolor=fill,
            edgecolor=_color(sh.line.color, "#444"), linewidth=float(sh.line.width or 2) * _PT,
            zorder=5))


def _draw_text(cv: _Canvas) -> None:
    for an in cv.fig.layout.annotations:
        if an.xref != "paper" or an.yref != "paper" or an.text is None:
            continue
        x, y = cv.paper(float(an.x), float(an.y))
        ha = {"left": "left", "right": "right"}.get(an.xanchor or "center", "center")
        va = {"top": "top", "bottom": "bottom"}.get(an.yanchor or "middle", "center")
        size = (an.font.size or 16) * _PT
        cv.mfig.text(x, y + (3 / cv.h if va == "bottom" else 0), _text(an.text), ha=ha, va=va,
                     fontsize=size, parse_math=False)
    title = _text(cv.fig.layout.title)
    if title:
        t = cv.fig.layout.title
        x = float(t.x) if t.x is not None else 0.5
        ha = {"left": "left", "right": "right", "center": "center"}.get(t.xanchor or "center", "center")
        size = (t.font.size or 17) * _PT
        cv.mfig.text(x, 1 - cv.m["t"] / 2 / cv.h, title, ha=ha, va="center", fontsize=size,
                     parse_math=False)


def figure_to_matplotlib(fig: go.Figure | dict, *, width: int = 900, height: int = 600,
                         scale: float = 1.0) -> Figure:
    """Render a plotly figure (or its dict/JSON form) into a matplotlib ``Figure`` on an Agg canvas.

    The result is ``round(width*scale) x round(height*scale)`` pixels when saved without
    ``bbox_inches``; it is not registered with pyplot (no global state, no GUI backend).
    """
    f = fig if isinstance(fig, go.Figure) else go.Figure(fig)
    unknown = sorted({tr.type for tr in f.data} - set(SUPPORTED))
    if unknown:
        raise UnsupportedFigure(f"the matplotlib fallback cannot draw trace type(s) {unknown} (it draws "
                                f"{', '.join(SUPPORTED)}); install a Chromium so that kaleido renders the figure "
                                "(`apt-get install chromium`, or set BROWSER_PATH).")
    cv = _Canvas(f, int(width), int(height), float(scale))
    _draw_traces(cv)
    draw_charts(cv, _color)
    _style_axes(cv)
    _draw_shapes(cv)
    _draw_text(cv)
    return cv.mfig
