"""Attention explorer: the last-token (or any query row's) attention over the original image, plain vs
reformulated side by side, with sliders for layer, head set and query token; the risky box drawn.

    ex = attention_explorer(plain, reformulated, example=0, box=q.box)
    ex.save_html("explorer.html")      # standalone, works offline without a kernel
    ex.widget()                        # the same choices as ipywidgets controls in Jupyter
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from moras_interp.attention.result import CrossModalAttention
from moras_interp.viz import token_map
from moras_interp.viz.explorer import frame_name, interactive, save_explorer_html, slider_layout
from moras_interp.viz.figures import _add_boxes, _image_trace, _pixel_axes
from moras_interp.viz.style import degenerate_range, ellipsize, wrap_title

Box = tuple[float, float, float, float]
HEAD_SETS = ("all", "top-visual")


def _downsample(heat: np.ndarray, max_px: int) -> np.ndarray:
    """Nearest-pixel sample of an [H, W] map to at most ``max_px`` cells a side (keeps HTML small)."""
    h, w = heat.shape
    s = max(1, int(np.ceil(max(h, w) / max_px)))
    return heat[s // 2::s, s // 2::s]


@dataclass
class AttentionExplorer:
    """Precomputed maps: ``maps[(layer, heads, query)]`` = one float [h, w] map per condition."""

    conditions: list[str]
    dims: list[tuple[str, list[str]]]
    maps: dict[tuple[str, str, str], list[np.ndarray]]
    images: list[Any]
    sizes: list[tuple[int, int]]
    box: Box | None
    title: str
    prompts: list[str] = field(default_factory=list)

    def _panel_figure(self, key: tuple[str, str, str]) -> go.Figure:
        n = len(self.conditions)
        subtitles = [f"{c}: “{ellipsize(p, 48)}”" if p else c for c, p in zip(self.conditions, self.prompts)]
        fig = make_subplots(rows=1, cols=n, subplot_titles=subtitles, horizontal_spacing=0.06)
        zr = self._zrange(key)
        for i in range(n):
            img = _image_trace(self.images[i])
            if img is not None:
                fig.add_trace(img, row=1, col=i + 1)
            fig.add_trace(self._heat(key, i, zr), row=1, col=i + 1)
            _pixel_axes(fig, self.sizes[i], n=i + 1)
            _add_boxes(fig, self.box, xref=f"x{'' if i == 0 else i + 1}", yref=f"y{'' if i == 0 else i + 1}")
        width = 420 * n + 160
        fig.update_layout(title={"text": wrap_title(self.title, width - 40), "x": 0.5, "xanchor": "center"},
                          width=width, height=660, margin={"l": 50, "r": 120, "t": 110, "b": 250},
                          plot_bgcolor="white", paper_bgcolor="white")
        return fig

    def _zrange(self, key: tuple[str, str, str]) -> tuple[float, float]:
        """One colour range for both panels of a choice: its min..max (attention differences are small)."""
        lo = min(float(np.nanmin(m)) for m in self.maps[key])
        hi = max(float(np.nanmax(m)) for m in self.maps[key])
        return degenerate_range(lo, hi)

    def _heat(self, key: tuple[str, str, str], i: int, zr: tuple[float, float]) -> go.Heatmap:
        m = self.maps[key][i]
        w, h = self.sizes[i]
        dx, dy = w / m.shape[1], h / m.shape[0]
        return go.Heatmap(z=m, x0=dx / 2, dx=dx, y0=dy / 2, dy=dy, colorscale="Inferno", opacity=0.6, zmin=zr[0],
                          zmax=zr[1], showscale=i == 0, name=f"heat {self.conditions[i]}",
                          colorbar={"title": {"text": "attention", "side": "right"}},
                          hovertemplate="x=%{x:.0f} y=%{y:.0f}: %{z:.4g}<extra></extra>")

    def figure(self) -> go.Figure:
        """The plotly figure with one frame per (layer, head set, query) and one slider per choice."""
        keys = list(self.maps)
        fig = self._panel_figure(keys[0])
        heat_idx = [j for j, t in enumerate(fig.data) if t.type == "heatmap"]
        frames = []
        for key in keys:
            zr = self._zrange(key)
            frames.append(go.Frame(name=frame_name(key), traces=heat_idx,
                                   data=[self._heat(key, i, zr) for i in range(len(self.conditions))]))
        fig.frames = frames
        fig.update_layout(sliders=slider_layout(self.dims, plot_px=660 - 110 - 250))
        return fig

    def figure_for(self, layer: str, heads: str, query: str) -> go.Figure:
        """The static two-panel figure of one choice (what the Jupyter widget draws)."""
        return self._panel_figure((layer, heads, query))

    def save_html(self, path: str | Path, *, include_plotlyjs: bool | str = True) -> Path:
        return save_explorer_html(self.figure(), path, include_plotlyjs=include_plotlyjs)

    def widget(self) -> Any:
        """ipywidgets dropdowns for layer, head set and query token over a live figure (Jupyter)."""
        return interactive(self.dims, self.figure_for)


def attention_explorer(plain: CrossModalAttention, reformulated: CrossModalAttention | None = None,
                       example: int = 0, *, other_example: int | None = None, box: Box | None = None,
                       image: int = 0, max_px: int = 96, max_queries: int = 8,
                       conditions: tuple[str, str] = ("plain", "reformulated")) -> AttentionExplorer:
    """Precompute every map the explorer can show.

    Layers: each traced layer and "all"; head sets: "all" and "top-visual" (heads with the most image
    attention, :meth:`CrossModalAttention.resolve_heads`); query: "mean" over the valid query rows and each of
    the first ``max_queries`` rows (by position). Maps are token maps over the original image, sampled to at
    most ``max_px`` cells a side.
    """
    atts = [(plain, example)] + ([] if reformulated is None else
                                 [(reformulated, example if other_example is None else other_example)])
    names = list(conditions[: len(atts)])
    n_rows = min(int(a.query_valid[e].sum()) for a, e in atts)
    queries = ["mean"] + [f"row {i}" for i in range(min(n_rows, max_queries))] if n_rows > 1 else ["mean"]
    layer_labels = [f"layer {l}" for l in plain.layers] + ["all layers"]
    dims = [("layer", layer_labels), ("heads", list(HEAD_SETS)), ("query", queries)]
    maps: dict[tuple[str, str, str], list[np.ndarray]] = {}
    per = []
    for a, e in atts:
        lay = a.image_layout(e, image)
        per.append((a, e, lay, a.image_attention(e, image)))  # [L, H, r, V]
    for li, lab in enumerate(layer_labels):
        layers = plain.layers if lab == "all layers" else [plain.layers[li]]
        for hs in HEAD_SETS:
            for q in queries:
                row_maps = []
                for a, e, lay, att in per:
                    pairs = a.resolve_heads(hs, layers, [e])
                    rows = att.mean(2) if q == "mean" else att[:, :, int(q.split()[1])]
                    scores = np.stack([rows[a.layers.index(l), a.heads.index(h)].numpy() for l, h in pairs]).mean(0)
                    row_maps.append(_downsample(token_map(scores, lay), max_px).astype(np.float32))
                maps[(lab, hs, q)] = row_maps
    images = [a.images[e][image] if e < len(a.images) and image < len(a.images[e]) else None for a, e, _, _ in per]
    sizes = [lay.image_size for _, _, lay, _ in per]
    prompts = [a.prompts[e] if e < len(a.prompts) else "" for a, e, _, _ in per]
    model = plain.model_id.rsplit("/", 1)[-1] or "model"
    title = f"{model}: attention over the image · query {plain.query or 'rows'}" + (
        f" · risky box {tuple(int(v) for v in box)}" if box is not None else "")
    return AttentionExplorer(names, dims, maps, images, sizes, box, title, prompts)
