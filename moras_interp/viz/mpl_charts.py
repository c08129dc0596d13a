"""Chart traces (``Scatter`` lines/markers and vertical ``Bar``) for the matplotlib renderer of
:mod:`moras_interp.viz.mpl`, with categorical x axes, grouped bars, error bars, log axes and a legend."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

_COLORWAY = ("#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880")


def _num(v: Any) -> np.ndarray:
    return np.asarray([np.nan if x is None else float(x) for x in v], dtype=np.float64)


def _is_categorical(v: Any) -> bool:
    return v is not None and any(isinstance(x, str) for x in v)


def _err(tr: Any, n: int) -> np.ndarray | None:
    e = getattr(tr, "error_y", None)
    if e is None or e.array is None or e.visible is False:
        return None
    arr = _num(e.array)
    return arr if arr.shape[0] == n else None


def _histogram(cv: Any, ax: Any, key: tuple[str, str], tr: Any, c: Any, label: str | None) -> None:
    """A vertical histogram of ``tr.x`` with plotly's ``xbins`` (start, end, size) when given."""
    x = _num(tr.x if tr.x is not None else [])
    x = x[np.isfinite(x)]
    xb = tr.xbins
    if xb is not None and xb.size is not None and xb.start is not None and xb.end is not None:
        bins: Any = np.arange(float(xb.start), float(xb.end) + float(xb.size) / 2, float(xb.size))
    else:
        bins = "auto"
    alpha = 1.0 if tr.opacity is None else float(tr.opacity)
    counts, edges, _ = ax.hist(x, bins=bins, color=c, alpha=alpha, label=label)
    if len(edges):
        cv.grow(key, float(edges[0]), float(edges[-1]), 0.0, float(max(counts.max(initial=0), 1)))


def draw_charts(cv: Any, color: Any) -> None:
    """Draw the figure's scatter and bar traces onto the canvas ``cv`` (a ``mpl._Canvas``).

    ``color(c, default)`` converts a plotly colour to an RGBA tuple.
    """
    fig: go.Figure = cv.fig
    charts = [tr for tr in fig.data if tr.type in ("scatter", "bar", "histogram")]
    if not charts:
        return
    cats: dict[str, list[str]] = {}
    for xid in {tr.xaxis or "x" for tr in charts}:  # an explicit category order first
        arr = cv.layout_axis("x", xid).categoryarray
        if arr is not None:
            cats[xid] = [str(v) for v in arr]
    for tr in charts:  # categorical x per axis: union of categories in first-seen order
        if _is_categorical(tr.x) or (tr.x is not None and cv.layout_axis("x", tr.xaxis or "x").type == "category"):
            lst = cats.setdefault(tr.xaxis or "x", [])
            lst += [str(x) for x in tr.x if str(x) not in lst]
    bars: dict[tuple[str, str], list[Any]] = {}
    for tr in charts:
        if tr.type == "bar":
            bars.setdefault((tr.xaxis or "x", tr.yaxis or "y"), []).append(tr)
    legend_axes = set()
    for i, tr in enumerate(charts):
        key = (tr.xaxis or "x", tr.yaxis or "y")
        ax = cv.ax(*key)
        way = fig.layout.colorway or _COLORWAY
        default = way[i % len(way)]
        y = _num(tr.y if tr.y is not None else [])
        if tr.x is None:
            x = np.arange(len(y), dtype=np.float64)
        elif key[0] in cats:
            x = np.asarray([cats[key[0]].index(str(v)) for v in tr.x], dtype=np.float64)
        else:
            x = _num(tr.x)
        label = tr.name if tr.name and tr.showlegend is not False else None
        if label:
            legend_axes.add(key)
        if tr.type == "histogram":
            _histogram(cv, ax, key, tr, color(tr.marker.color if isinstance(tr.marker.color, str) else None, default),
                       label)
            continue
        err = _err(tr, len(y))
        if tr.type == "bar":
            group = bars[key]
            width = 0.8 / len(group)
            off = (group.index(tr) - (len(group) - 1) / 2) * width
            c = color(tr.marker.color if isinstance(tr.marker.color, str) else None, default)
            ax.bar(x + off, y, width=width, color=c, label=label, yerr=err, capsize=2)
        else:
            mode = tr.mode or "lines+markers"
            c = color(tr.line.color if tr.line.color else (tr.marker.color if isinstance(tr.marker.color, str)
                                                          else None), default)
            ls = {"dash": "--", "dot": ":", "dashdot": "-."}.get(tr.line.dash or "solid", "-")
            ax.plot(x, y, linestyle=ls if "lines" in mode else "none", marker="o" if "markers" in mode else None,
                    markersize=4, color=c, label=label, linewidth=1.5)
            if err is not None:
                ax.errorbar(x, y, yerr=err, fmt="none", ecolor=c, capsize=2)
        fin = np.isfinite(x) & np.isfinite(y)
        if fin.any():
            pad = 0.5 if key[0] in cats or tr.type == "bar" else 0.0
            lo, hi = float(y[fin].min()), float(y[fin].max())
            margin = 0.0 if tr.type == "bar" else 0.05 * ((hi - lo) or abs(hi) or 1.0)
            ylo, yhi = (min(0.0, lo) if tr.type == "bar" else lo - margin), hi + margin
            if cv.layout_axis("y", key[1]).type == "log" and lo > 0:
                ylo, yhi = lo / 1.2, hi * 1.2
            cv.grow(key, float(x[fin].min()) - pad, float(x[fin].max()) + pad, ylo, yhi)
    for (xid, yid), ax in cv.axes.items():
        xa, ya = cv.layout_axis("x", xid), cv.layout_axis("y", yid)
        if xid in cats:
            ax.set_xticks(range(len(cats[xid])), labels=cats[xid], rotation=30 if len(cats[xid]) > 6 else 0)
        for a, setter in ((xa, ax.set_xscale), (ya, ax.set_yscale)):
            if a.type == "log":
                setter("log")
        if (xid, yid) in legend_axes and fig.layout.showlegend is not False:
            if fig.layout.legend.orientation == "h":  # the house style: a band above the plot, off the data
                handles = ax.get_legend_handles_labels()[0]
                lift = 0.0 if fig.layout.legend.y is None else float(fig.layout.legend.y) - 1.02
                ax.legend(fontsize=9, frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0 + lift * 1.1),
                          ncol=max(1, len(handles)), borderaxespad=0.2)
            else:
                ax.legend(fontsize=8, frameon=False)
