"""Plotly figures: score heatmaps over the original image, layer x head grids, small multiples.

Pixel geometry: every image panel uses continuous original-image pixel coordinates — pixel
``(row i, col j)`` is the cell ``[j, j+1) x [i, i+1)``, x to the right, y DOWN (the y range is
``[H, 0]``), aspect ratio locked to 1. The image (``go.Image``, PNG data URI) and the heat
(``go.Heatmap``) both centre their first pixel at ``(0.5, 0.5)`` with unit steps, so a score painted
over box ``(x0, y0, x1, y1)`` by :func:`~moras_interp.viz.raster.token_map` lies exactly over those
image pixels, and a risky-region rectangle drawn with the same numbers lines up with both.

The figures use only a small vocabulary (Image, Heatmap, rect shapes, paper annotations, titles,
colourbars) so that :func:`moras_interp.viz.mpl.figure_to_matplotlib` can render any of them
without a browser — the figure itself is the single source of truth for HTML and PNG export.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image
from plotly.subplots import make_subplots

from moras_interp.viz.style import _CHAR_PX, TITLE_PX, degenerate_range, title_lines, wrap_title

Box = tuple[float, float, float, float]
ImageLike = Image.Image | np.ndarray | None

BOX_COLOR = "#00e5ff"
_MARGIN = {"l": 64, "r": 140, "t": 70, "b": 64}


def _image_size(image: ImageLike, heat: np.ndarray) -> tuple[int, int]:
    """``(W, H)`` of the panel: the image's size, or the heat's shape when there is no image."""
    if image is None:
        return int(heat.shape[1]), int(heat.shape[0])
    if isinstance(image, Image.Image):
        return image.size
    return int(image.shape[1]), int(image.shape[0])


def _image_trace(image: ImageLike) -> go.Image | None:
    """``go.Image`` of the picture as a PNG data URI, pixel ``(0, 0)`` centred at ``(0.5, 0.5)``."""
    if image is None:
        return None
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)  # [H, W, 3|4] uint8, or float in [0, 1]
        image = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8) if arr.dtype.kind == "f" else arr)
    buf = io.BytesIO()
    image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return go.Image(source=uri, x0=0.5, dx=1.0, y0=0.5, dy=1.0, hoverinfo="skip", name="image")


def _as_heat(heat: np.ndarray | torch.Tensor) -> np.ndarray:
    h = heat.detach().cpu().float().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    if h.ndim != 2:
        raise ValueError(f"heat must be [H, W], got shape {h.shape}")
    return h.astype(np.float32)


def _heat_trace(
    heat: np.ndarray, size: tuple[int, int], *, colorscale: str, opacity: float,
    zmin: float | None, zmax: float | None, zmid: float | None = None,
    showscale: bool = True, colorbar_title: str = "",
) -> go.Heatmap:
    """Heatmap whose cells tile ``[0, W] x [0, H]`` (cell = one pixel when heat is [H, W])."""
    dx, dy = size[0] / heat.shape[1], size[1] / heat.shape[0]
    return go.Heatmap(
        z=heat, x0=dx / 2, dx=dx, y0=dy / 2, dy=dy, colorscale=colorscale, opacity=opacity,
        zmin=zmin, zmax=zmax, zmid=zmid, showscale=showscale, name="heat",
        colorbar={"title": {"text": colorbar_title, "side": "right"}} if showscale else None,
        hovertemplate="x=%{x:.0f} y=%{y:.0f}: %{z:.4g}<extra></extra>",
    )


def _pixel_axes(fig: go.Figure, size: tuple[int, int], n: int = 1, ticks: bool = True) -> None:
    """Axes pair ``n`` (1-based, as numbered by ``make_subplots``) as image axes: x in ``[0, W]``,
    y in ``[H, 0]`` (downwards), equal scale, the axes box shrunk to the image (no padding)."""
    sx = "" if n == 1 else str(n)
    common = {"constrain": "domain", "showgrid": False, "zeroline": False, "showticklabels": ticks,
              "ticks": "outside" if ticks else ""}
    fig.layout["xaxis" + sx].update(range=[0, size[0]], title={"text": "x (image pixels)" if ticks else ""}, **common)
    fig.layout["yaxis" + sx].update(range=[size[1], 0], scaleanchor="x" + sx, scaleratio=1,
                                    title={"text": "y (image pixels)" if ticks else ""}, **common)


def _outline(fig: go.Figure, x0: float, y0: float, x1: float, y1: float, xref: str = "x", yref: str = "y") -> None:
    """An unfilled ``BOX_COLOR`` rectangle (risky regions, highlighted cells)."""
    fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, xref=xref, yref=yref,
                  line={"color": BOX_COLOR, "width": 2}, fillcolor="rgba(0,0,0,0)")


def _add_boxes(fig: go.Figure, box: Box | Sequence[Box] | None, xref: str = "x", yref: str = "y") -> None:
    if box is None:
        return
    boxes = [box] if not isinstance(box[0], (tuple, list, np.ndarray, torch.Tensor)) else box
    for b in boxes:
        x0, y0, x1, y1 = (float(v) for v in b)
        _outline(fig, x0, y0, x1, y1, xref, yref)


def _range(heats: Sequence[np.ndarray], zmin: float | None, zmax: float | None) -> tuple[float, float]:
    finite = [h[np.isfinite(h)] for h in heats]
    finite = [f for f in finite if f.size]
    lo = zmin if zmin is not None else (min(float(f.min()) for f in finite) if finite else 0.0)
    hi = zmax if zmax is not None else (max(float(f.max()) for f in finite) if finite else 1.0)
    return degenerate_range(lo, hi)


def _panel_size(size: tuple[int, int], target: int) -> tuple[int, int]:
    s = target / max(size)
    return max(1, round(size[0] * s)), max(1, round(size[1] * s))


def _finish(fig: go.Figure, title: str, width: int, height: int) -> go.Figure:
    """The layout every figure shares: centred title, ``_MARGIN``, white background, the given size."""
    text = wrap_title(title, width - 40)
    extra = max(0, title_lines(text) - 2) * 24  # _MARGIN["t"] holds two lines
    fig.update_layout(title={"text": text, "x": 0.5, "xanchor": "center"}, margin={**_MARGIN, "t": _MARGIN["t"] + extra},
                      width=width, height=height + extra, plot_bgcolor="white", paper_bgcolor="white")
    return fig


def heatmap_over_image(
    image: ImageLike,
    heat: np.ndarray | torch.Tensor,
    *,
    title: str = "",
    colorscale: str = "Inferno",
    opacity: float = 0.55,
    box: Box | Sequence[Box] | None = None,
    zmin: float | None = None,
    zmax: float | None = None,
    zmid: float | None = None,
    colorbar_title: str = "score",
) -> go.Figure:
    """The original image with ``heat`` [H, W] overlaid in exact pixel geometry.

    Args:
        image: PIL image (or [H, W, 3] uint8 array) of size ``(W, H)``; ``None`` draws the heat alone.
        heat: [H, W] map in original-image pixels (e.g. from :func:`token_map`; NaN = transparent).
            A heat of another shape is stretched to cover the image (each cell ``W/w x H/h`` pixels).
        box: an ``(x0, y0, x1, y1)`` risky-region rectangle (or a list of them) in image pixels.
        zmin, zmax, zmid: colour range (default: the heat's finite min/max).
    """
    h = _as_heat(heat)
    size = _image_size(image, h)
    fig = go.Figure()
    img = _image_trace(image)
    if img is not None:
        fig.add_trace(img)
    fig.add_trace(_heat_trace(h, size, colorscale=colorscale, opacity=opacity, zmin=zmin, zmax=zmax,
                              zmid=zmid, colorbar_title=colorbar_title))
    _pixel_axes(fig, size)
    _add_boxes(fig, box)
    pw, ph = _panel_size(size, 520)
    return _finish(fig, title, pw + _MARGIN["l"] + _MARGIN["r"], ph + _MARGIN["t"] + _MARGIN["b"])


def difference_map(
    image: ImageLike,
    heat_a: np.ndarray | torch.Tensor,
    heat_b: np.ndarray | torch.Tensor,
    *,
    title: str = "",
    colorscale: str = "RdBu_r",
    opacity: float = 0.7,
    box: Box | Sequence[Box] | None = None,
    colorbar_title: str = "A − B",
) -> go.Figure:
    """``heat_a - heat_b`` [H, W] over the image on a diverging colourscale centred at 0."""
    d = _as_heat(heat_a) - _as_heat(heat_b)
    finite = d[np.isfinite(d)]
    m = float(np.abs(finite).max()) if finite.size else 0.0
    m = m if m > 0 else 1.0
    return heatmap_over_image(image, d, title=title, colorscale=colorscale, opacity=opacity, box=box,
                              zmin=-m, zmax=m, zmid=0.0, colorbar_title=colorbar_title)


def layer_head_grid(
    mass: torch.Tensor | np.ndarray,
    *,
    title: str = "",
    zlabel: str = "image-attention mass",
    colorscale: str = "Viridis",
    highlight: Sequence[tuple[int, int]] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> go.Figure:
    """Layer x head heatmap of ``mass`` [L, H] (first row at the top); ``highlight`` outlines (l, h) cells.

    ``layers`` / ``heads`` label the rows / columns when ``mass`` covers a subset (e.g. layers 8–15);
    ``highlight`` then uses those labels. Default labels are 0..L-1 and 0..H-1.
    """
    m = mass.detach().cpu().float().numpy() if isinstance(mass, torch.Tensor) else np.asarray(mass, float)
    if m.ndim != 2:
        raise ValueError(f"mass must be [L, H], got shape {m.shape}")
    n_layers, n_heads = m.shape
    ly = list(range(n_layers)) if layers is None else [int(v) for v in layers]
    hx = list(range(n_heads)) if heads is None else [int(v) for v in heads]
    if len(ly) != n_layers or len(hx) != n_heads:
        raise ValueError(f"{len(ly)} layer / {len(hx)} head labels for mass of shape {m.shape}")
    fig = go.Figure(go.Heatmap(
        z=m, x0=0, dx=1, y0=0, dy=1, colorscale=colorscale, colorbar={"title": {"text": zlabel, "side": "right"}},
        customdata=np.stack(np.meshgrid(hx, ly), axis=-1),
        hovertemplate="layer %{customdata[1]}, head %{customdata[0]}: %{z:.4g}<extra></extra>",
    ))
    for layer, head in highlight or []:
        r, c = ly.index(int(layer)), hx.index(int(head))
        _outline(fig, c - 0.5, r - 0.5, c + 0.5, r + 0.5)
    def ticks(n: int) -> dict:  # whole numbers only: a head or layer 0.5 does not exist
        return {"tickmode": "linear", "tick0": 0, "dtick": max(1, math.ceil(n / 16)), "tickformat": "d"}

    xt = ticks(n_heads) if heads is None else {"tickvals": list(range(n_heads)), "ticktext": [str(v) for v in hx]}
    yt = ticks(n_layers) if layers is None else {"tickvals": list(range(n_layers)), "ticktext": [str(v) for v in ly]}
    fig.update_xaxes(title={"text": "head"}, range=[-0.5, n_heads - 0.5], showgrid=False, zeroline=False, **xt)
    fig.update_yaxes(title={"text": "layer"}, range=[n_layers - 0.5, -0.5], showgrid=False, zeroline=False, **yt)
    # wide enough for the title in two lines where it can be (a third line would reach a small grid's plot)
    title_px = max((len(re.sub(r"<[^>]+>", "", part)) * (0.7 if part.startswith("<sup>") else 1.0)
                    for part in str(title).split("<br>")), default=0) * TITLE_PX * _CHAR_PX
    width = max(420, 18 * n_heads + 260, min(900, int(title_px * 0.6) + 80))  # 0.6: slack for word wrapping
    return _finish(fig, title, width, max(320, 14 * n_layers + 160))


def small_multiples(
    heats: Sequence[np.ndarray | torch.Tensor],
    image: ImageLike,
    titles: Sequence[str],
    cols: int = 4,
    *,
    title: str = "",
    colorscale: str = "Inferno",
    opacity: float = 0.55,
    box: Box | Sequence[Box] | None = None,
    zmin: float | None = None,
    zmax: float | None = None,
    colorbar_title: str = "score",
    panel_px: int = 220,
) -> go.Figure:
    """One panel per heat [H, W] (e.g. per layer) over the same image, sharing one colour range."""
    hs = [_as_heat(h) for h in heats]
    if not hs:
        raise ValueError("small_multiples needs at least one heat map")
    if len(titles) != len(hs):
        raise ValueError(f"{len(hs)} heats but {len(titles)} titles")
    size = _image_size(image, hs[0])
    lo, hi = _range(hs, zmin, zmax)
    cols = max(1, min(cols, len(hs)))
    rows = math.ceil(len(hs) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles),
                        horizontal_spacing=0.02, vertical_spacing=0.25 / rows)
    img = _image_trace(image)  # encoded once; add_trace copies it into each panel
    for i, h in enumerate(hs):
        r, c = i // cols + 1, i % cols + 1
        if img is not None:
            fig.add_trace(img, row=r, col=c)
        fig.add_trace(_heat_trace(h, size, colorscale=colorscale, opacity=opacity, zmin=lo, zmax=hi,
                                  showscale=i == 0, colorbar_title=colorbar_title), row=r, col=c)
        _pixel_axes(fig, size, n=i + 1, ticks=False)
        suffix = "" if i == 0 else str(i + 1)
        _add_boxes(fig, box, xref="x" + suffix, yref="y" + suffix)
    pw, ph = _panel_size(size, panel_px)
    return _finish(fig, title, cols * (pw + 8) + _MARGIN["l"] + _MARGIN["r"],
                   rows * (ph + 30) + _MARGIN["t"] + _MARGIN["b"])
