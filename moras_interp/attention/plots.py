"""Pictures of a :class:`CrossModalAttention`: heatmaps over the ORIGINAL image, layer × head grids,
small multiples per layer and plain-vs-reformulated differences (plotly figures).

Data-driven head sets (``"top-visual"``, a float threshold) are chosen on the pictured example; pass
explicit (layer, head) pairs, e.g. ``attn.head_set(threshold=0.2)``, for a dataset-wide set.

Geometry: token scores are painted over each token's pixel box in original-image coordinates
(:func:`moras_interp.viz.token_map`), so LLaVA's pad-to-square bands, center crops, Qwen2-VL's dynamic
resolution and LLaVA-NeXT / Idefics3 / InternVL tiles land on the right pixels; pixels no token covers
(e.g. cropped away) stay transparent. Where several grids cover a pixel (base image + hi-res tiles) their
scores are averaged; pass ``grid="base"`` (or a tile name / prefix) to paint one grid only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image

from moras_interp.viz import describe, difference_map, heatmap_over_image, token_map
from moras_interp.viz import layer_head_grid as _layer_head_grid
from moras_interp.viz import small_multiples as _small_multiples
from moras_interp.viz.style import ellipsize

if TYPE_CHECKING:
    from moras_interp.attention.result import Box, CrossModalAttention, HeadSpec

Layers = Sequence[int] | int | str | None


def _layers(attn: CrossModalAttention, layers: Layers) -> list[int]:
    if layers is None or layers == "all":
        return list(attn.layers)
    if isinstance(layers, str):
        raise ValueError(f"layers={layers!r}: use 'all', an int or a list of layer indices.")
    return [int(layers)] if isinstance(layers, int) else [int(l) for l in layers]


def _image(attn: CrossModalAttention, example: int, image: int) -> Image.Image | None:
    ims = attn.images[example] if example < len(attn.images) else []
    return ims[image] if image < len(ims) else None


def _heads_label(heads: HeadSpec, pairs: list[tuple[int, int]]) -> Any:
    if heads is None or heads == "all":
        return "all"
    return pairs


def _subtitle(attn: CrossModalAttention, example: int) -> str:
    prompt = attn.prompts[example] if example < len(attn.prompts) else ""
    prompt = ellipsize(prompt, 70)
    q = f"query: {attn.query}" if attn.query else ""
    return " · ".join(p for p in (q, f"“{prompt}”" if prompt else "") if p)


def model_name(model_id: str) -> str:
    """A short model name for titles: a local path's last component, an HF id as is."""
    if not model_id:
        return "model"
    return Path(model_id).name if os.path.isabs(model_id) or model_id.startswith(".") else model_id


def _title(attn: CrossModalAttention, example: int, layers: list[int], heads: Any, extra: str = "") -> str:
    head = describe(model_name(attn.model_id), layers, heads)
    subs = [p for p in (_subtitle(attn, example), extra) if p]
    return "<br>".join([head, *(f"<sup>{p}</sup>" for p in subs)])


def _fit(fig: go.Figure, min_width: int = 640) -> go.Figure:
    """Room for a multi-line title: top margin per line, and a width the title fits in."""
    lines = fig.layout.title.text.count("<br>") + 1 if fig.layout.title.text else 0
    top = 30 + 24 * lines
    old = fig.layout.margin.t or 0
    width = max(int(fig.layout.width or min_width), min_width)
    fig.update_layout(margin={"t": max(top, old)}, width=width,
                      height=int(fig.layout.height or 500) + max(0, top - old))
    return fig


def token_heat(attn: CrossModalAttention, example: int, scores: torch.Tensor, image: int = 0, *,
               grid: Any = None, reduce: str = "mean") -> np.ndarray:
    """Scores [V] (grid order of image ``image``) painted over the original image: float64 [H, W]."""
    return token_map(scores, attn.image_layout(example, image), grid=grid, reduce=reduce)


def heatmap(attn: CrossModalAttention, example: int = 0, *, layers: Layers = None, heads: HeadSpec = "top-visual",
            image: int = 0, box: Box | None = None, grid: Any = None, reduce: str = "mean",
            colorscale: str = "Inferno", opacity: float = 0.6) -> go.Figure:
    """a* (mean attention over the head set and valid query rows) over the original image.

    Args:
        layers: layers to draw heads from (default all traced layers).
        heads: ``"top-visual"``, ``"all"``, a float threshold, head indices or (layer, head) pairs
            (see :meth:`CrossModalAttention.resolve_heads`).
        box: a region ``(x0, y0, x1, y1)`` in original pixels, outlined, with its share in the title.
        grid, reduce: passed to :func:`moras_interp.viz.token_map`.
    """
    attn.image_layout(example, image)  # a text-only row: a clear error naming it
    ls = _layers(attn, layers)
    pairs = attn.resolve_heads(heads, ls, [example])
    scores = attn.aggregate(example, pairs, image)
    extra = ""
    if box is not None:
        rs = attn.region_share(example, box, heads=pairs, image=image)
        extra = f"region share {rs.aggregated:.3f} ({rs.ratio:.2f}× its area)"
    fig = heatmap_over_image(_image(attn, example, image),
                             token_heat(attn, example, scores, image, grid=grid, reduce=reduce),
                             title=_title(attn, example, ls, _heads_label(heads, pairs), extra), box=box,
                             colorscale=colorscale, opacity=opacity, zmin=0.0, colorbar_title="attention")
    return _fit(fig, 0)


def layer_head_grid(attn: CrossModalAttention, example: int = 0, *,
                    highlight: HeadSpec = "top-visual") -> go.Figure:
    """Layer × head grid of the attention mass on all image tokens (mean over valid query rows).

    ``highlight`` outlines a head set (``None`` for none).
    """
    pairs = [] if highlight is None else attn.resolve_heads(highlight, examples=[example])
    extra = f"outlined: {len(pairs)} heads ({highlight})" if pairs and isinstance(highlight, (str, float)) else ""
    return _fit(_layer_head_grid(attn.image_mass(example), layers=attn.layers, heads=attn.heads, highlight=pairs,
                                 title=_title(attn, example, attn.layers, "all", extra), zlabel="image mass"))


def small_multiples(attn: CrossModalAttention, example: int = 0, *, layers: Layers = None, heads: HeadSpec = "all",
                    image: int = 0, cols: int = 4, box: Box | None = None, grid: Any = None,
                    colorscale: str = "Inferno") -> go.Figure:
    """One panel per layer: that layer's head-set mean over the image, one shared colour range.

    ``heads`` is resolved per layer (``"all"``: every head of the layer; ``"top-visual"``: that layer's
    top heads; head indices: those heads in each layer).
    """
    ls = _layers(attn, layers)
    heats, titles = [], []
    for l in ls:
        pairs = attn.resolve_heads(heads, [l], [example])
        heats.append(token_heat(attn, example, attn.aggregate(example, pairs, image), image, grid=grid))
        titles.append(f"layer {l}" + ("" if heads in (None, "all") else f" · heads {[h for _, h in pairs]}"))
    title = _title(attn, example, ls, heads if isinstance(heads, str) or heads is None else "per layer")
    return _fit(_small_multiples(heats, _image(attn, example, image), titles, cols=cols, title=title, box=box,
                                 colorscale=colorscale, zmin=0.0, colorbar_title="attention"), 0)


def difference(attn: CrossModalAttention, other: CrossModalAttention, example: int = 0, *,
               other_example: int | None = None, layers: Layers = None, heads: HeadSpec = "top-visual",
               image: int = 0, box: Box | None = None, grid: Any = None) -> go.Figure:
    """``other − attn`` of a* over the same image (e.g. reformulated − plain question), diverging colours.

    The head set is resolved on ``attn`` and used for both; with ``box`` the title gives both region
    shares and their change.
    """
    oe = example if other_example is None else other_example
    ls = _layers(attn, layers)
    pairs = attn.resolve_heads(heads, ls, [example])
    cmp = attn.compare(other, example, oe, heads=pairs, box=box)
    heat_a = token_heat(attn, example, attn.aggregate(example, pairs, image), image, grid=grid)
    heat_b = token_heat(other, oe, other.aggregate(oe, pairs, image), image, grid=grid)
    pa = attn.prompts[example] if example < len(attn.prompts) else "A"
    pb = other.prompts[oe] if oe < len(other.prompts) else "B"
    lines = [describe(model_name(attn.model_id), ls, _heads_label(heads, pairs)), f"<sup>A: “{ellipsize(pa, 50)}”</sup>",
             f"<sup>B: “{ellipsize(pb, 50)}”</sup>"]
    if box is not None:
        lines.append(f"<sup>region share {cmp['share_a']:.3f} → {cmp['share_b']:.3f} "
                     f"({cmp['share_change']:+.3f})</sup>")
    return _fit(difference_map(_image(attn, example, image), heat_b, heat_a, title="<br>".join(lines), box=box,
                               colorbar_title="B − A"), 0)


__all__ = ["difference", "heatmap", "layer_head_grid", "small_multiples", "token_heat"]
