"""Helpers of the matplotlib fallback renderer (:mod:`moras_interp.viz.mpl`): plotly values (typed arrays,
colours, colourscales, rich text, cell edges, image pixels, colour ranges) as matplotlib / numpy values."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import numpy as np
import plotly.graph_objects as go
from matplotlib.colors import LinearSegmentedColormap, to_rgba
from PIL import Image

from moras_interp.viz.style import degenerate_range


def _arr(v: Any) -> np.ndarray:
    """A trace array: numpy / list, or plotly's typed-array JSON ``{"dtype", "bdata", "shape"}``."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if shape:
            dims = [int(s) for s in str(shape).split(",")] if isinstance(shape, str) else list(shape)
            a = a.reshape(dims)
        return a
    return np.asarray(v)


def _color(c: Any, default: str = "black") -> tuple[float, float, float, float]:
    """A plotly colour string (``#rrggbb``, ``rgb()``, ``rgba()``, CSS name) as an RGBA tuple."""
    if c is None:
        return to_rgba(default)
    s = str(c).strip()
    m = re.fullmatch(r"rgba?\(([^)]*)\)", s)
    if m:
        parts = [float(p) for p in m.group(1).split(",")]
        alpha = parts[3] if len(parts) > 3 else 1.0
        return parts[0] / 255, parts[1] / 255, parts[2] / 255, alpha
    return to_rgba(s)


def _cmap(trace: Any) -> LinearSegmentedColormap:
    scale = trace.colorscale or go.Heatmap(colorscale="Plasma").colorscale
    pts = [(float(p), _color(c)) for p, c in scale]
    cmap = LinearSegmentedColormap.from_list("plotly", pts, N=256)
    if trace.reversescale:
        cmap = cmap.reversed()
    return cmap.with_extremes(bad=(0, 0, 0, 0))


def _text(t: Any) -> str:
    """Plotly rich text -> plain text (``<br>`` -> newline, other tags dropped)."""
    if t is None:
        return ""
    s = t.text if hasattr(t, "text") else t
    s = re.sub(r"<br\s*/?>", "\n", str(s or ""), flags=re.I)
    return re.sub(r"<[^>]+>", "", s)


def _edges(n: int, start: Any, step: Any, coords: Any) -> tuple[float, float]:
    """Outer edges of ``n`` cells given either centre coordinates or ``start``/``step``."""
    if coords is not None:
        c = _arr(coords).astype(np.float64)
        if c.size >= 2:
            return float(c[0] - (c[1] - c[0]) / 2), float(c[-1] + (c[-1] - c[-2]) / 2)
        if c.size == 1:
            return float(c[0] - 0.5), float(c[0] + 0.5)
    s0 = float(start) if start is not None else 0.0
    d = float(step) if step is not None else 1.0
    return s0 - d / 2, s0 + (n - 0.5) * d


def _image_pixels(trace: Any) -> np.ndarray:
    if trace.z is not None:
        z = _arr(trace.z)
        return np.clip(z[..., :3], 0, 255).astype(np.uint8)
    src = str(trace.source or "")
    if "," not in src:
        raise ValueError("Image trace has neither z nor a data-URI source")
    data = base64.b64decode(src.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def _zrange(trace: Any, z: np.ndarray) -> tuple[float, float]:
    finite = z[np.isfinite(z)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if trace.zmid is not None and (trace.zmin is None or trace.zmax is None):
        m = max(abs(hi - trace.zmid), abs(trace.zmid - lo))
        lo, hi = trace.zmid - m, trace.zmid + m
    lo = float(trace.zmin) if trace.zmin is not None else lo
    hi = float(trace.zmax) if trace.zmax is not None else hi
    return degenerate_range(lo, hi)
