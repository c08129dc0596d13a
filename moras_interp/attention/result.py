"""``CrossModalAttention``: text→image attention rows with head sets, region share and pictures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from moras_interp.attention.region import overlap_fraction, region_area_share
from moras_interp.models.layout import ImageLayout, TokenLayout

Box = tuple[float, float, float, float]
HeadSpec = str | float | Sequence[int] | Sequence[tuple[int, int]] | None
FIGURE_KINDS: tuple[str, ...] = ("heatmap", "layer_head_grid", "small_multiples")


@dataclass
class RegionShare:
    """Share of image attention on a region.

    Attributes:
        per_head: float [L, H] share of each head's image attention that lands on the region.
        per_layer: float [L] share of each layer's head-averaged image attention.
        aggregated: share of the head-set-averaged map a* (see :meth:`CrossModalAttention.aggregate`).
        area_share: the region's fraction of the image area.
        ratio: aggregated / area_share (1.0 = no better than uniform attention over the image).
    """

    per_head: torch.Tensor
    per_layer: torch.Tensor
    aggregated: float
    area_share: float
    ratio: float


@dataclass
class CrossModalAttention:
    """Attention from chosen query rows to all keys, per layer and head.

    Attributes:
        rows: float32 [b, L, H, r, keys]: probabilities (each row sums to 1 over keys).
        query_positions: LongTensor [b, r]; query_valid: bool [b, r] (False = padding row).
        layers, heads: which layers / heads the L and H axes are.
        layouts: token layouts of the batch (image positions and pixel boxes).
        model_id, prompts, images: what was run (the original PIL images, for pictures).
        query: how the query rows were chosen ("last", "instruction", "positions"), for titles.
    """

    rows: torch.Tensor
    query_positions: torch.Tensor
    query_valid: torch.Tensor
    layers: list[int]
    heads: list[int]
    layouts: list[TokenLayout]
    model_id: str = ""
    prompts: list[str] = field(default_factory=list)
    images: list[list[Image.Image]] = field(default_factory=list)
    query: str = ""

    # --------------------------------------------------------------- views
    def image_layout(self, example: int, image: int = 0) -> ImageLayout:
        """The layout of image ``image`` of row ``example``; ``ValueError`` naming the row when it has none."""
        if not -len(self.layouts) <= example < len(self.layouts):
            raise ValueError(f"example={example} is out of range: this result has {len(self.layouts)} row(s).")
        ims = self.layouts[example].images
        if not -len(ims) <= image < len(ims):
            prompt = self.prompts[example] if example < len(self.prompts) else ""
            row = f"Row {example}{f' ({prompt!r})' if prompt else ''}"
            if not ims:
                raise ValueError(f"{row} has no image tokens (a text-only prompt), so it has no attention over an "
                                 "image to map or share: pick a row with an image.")
            raise ValueError(f"{row} has {len(ims)} image(s); image={image} is out of range (0–{len(ims) - 1}).")
        return ims[image]

    def image_columns(self, example: int, image: int | None = None, grid_only: bool = True) -> torch.Tensor:
        """Key positions of an image's tokens (all images if ``image`` is None), grid order."""
        ims = self.layouts[example].images if image is None else [self.image_layout(example, image)]
        if not ims:
            self.image_layout(example, 0)  # raises, naming the row
        return torch.cat([im.grid_positions() if grid_only else im.positions for im in ims])

    def _valid_rows(self, example: int) -> torch.Tensor:
        """[L, H, r_valid, keys]: the attention rows of ``example``, padding query rows dropped."""
        return self.rows[example][:, :, self.query_valid[example]]

    def image_attention(self, example: int, image: int | None = None) -> torch.Tensor:
        """[L, H, r_valid, V]: attention on each image token (grid order), valid query rows only."""
        return self._valid_rows(example)[..., self.image_columns(example, image)]

    def image_mass(self, example: int) -> torch.Tensor:
        """[L, H]: attention mass on all image tokens (separators included), mean over query rows."""
        return self._valid_rows(example)[..., self.layouts[example].image_positions].sum(-1).mean(-1)

    def text_mass(self, example: int) -> torch.Tensor:
        """[L, H]: attention mass on non-image keys, mean over query rows."""
        return 1.0 - self.image_mass(example)

    # --------------------------------------------------------------- head sets
    def head_set(self, *, top_k: int | None = None, threshold: float | None = None,
                 examples: list[int] | None = None, layers: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """Heads H_n as (layer, head) pairs: the ``top_k`` by image-attention mass, or those with mass > ``threshold``.

        The mass of a head is its attention on all image tokens, averaged over valid query rows and over
        ``examples`` (default: every example with an image). The MoRAS analysis uses ``threshold≈0.2``.
        ``layers`` restricts the candidates. Sorted by decreasing mass.
        """
        if (top_k is None) == (threshold is None):
            raise ValueError("Give exactly one of top_k or threshold.")
        exs = examples if examples is not None else [i for i, l in enumerate(self.layouts) if l.images]
        if not exs:
            raise ValueError("No example has an image: head sets need image attention.")
        mass = torch.stack([self.image_mass(e) for e in exs]).mean(0)  # [L, H]
        keep = set(self.layers if layers is None else (int(l) for l in layers))
        flat = [(float(mass[i, j]), self.layers[i], self.heads[j]) for i in range(mass.shape[0])
                for j in range(mass.shape[1]) if self.layers[i] in keep]
        flat.sort(key=lambda t: -t[0])
        chosen = flat[:top_k] if top_k is not None else [t for t in flat if t[0] > threshold]
        return [(l, h) for _, l, h in chosen]

    def resolve_heads(self, heads: HeadSpec = "all", layers: Sequence[int] | int | None = None,
                      examples: list[int] | None = None) -> list[tuple[int, int]]:
        """(layer, head) pairs named by ``heads`` within ``layers`` (default: every traced layer).

        ``heads``: ``"all"``; ``"top-visual"`` (the top 1/8 of heads by image mass, at least one); a float
        threshold (heads with image mass above it, as MoRAS's 0.2); a list of head indices (in every layer);
        or a list of (layer, head) pairs. Data-driven sets use the mean mass over ``examples`` (default all).
        """
        ls = self.layers if layers is None else ([layers] if isinstance(layers, int) else [int(l) for l in layers])
        missing = [l for l in ls if l not in self.layers]
        if missing:
            raise ValueError(f"layers {missing} were not traced; this result has layers {self.layers}.")
        if heads is None or heads == "all":
            return [(l, h) for l in ls for h in self.heads]
        if heads == "top-visual":
            return self.head_set(top_k=max(1, len(ls) * len(self.heads) // 8), layers=ls, examples=examples)
        if isinstance(heads, float):
            out = self.head_set(threshold=heads, layers=ls, examples=examples)
            if not out:
                best = self.head_set(top_k=1, layers=ls, examples=examples)
                raise ValueError(f"No head has image-attention mass above {heads}; the largest is at {best}. "
                                 "Lower the threshold or use heads='top-visual'.")
            return out
        if isinstance(heads, str):
            raise ValueError(f"heads={heads!r}: use 'all', 'top-visual', a float threshold or a list.")
        items = list(heads)
        if items and all(isinstance(x, (int, np.integer)) for x in items):
            pairs = [(l, int(h)) for l in ls for h in items]
        else:
            pairs = [(int(l), int(h)) for l, h in items]
        bad = [p for p in pairs if p[0] not in self.layers or p[1] not in self.heads]
        if bad or not pairs:
            raise ValueError(f"heads {bad or items} are not in this result (layers {self.layers}, heads {self.heads}).")
        return pairs

    def aggregate(self, example: int, heads: HeadSpec = "all", image: int | None = 0,
                  layers: Sequence[int] | int | None = None) -> torch.Tensor:
        """a*_j [V]: mean over the head set (and valid query rows) of the attention on image token j.

        Tokens are in grid order (``ImageLayout.grid_positions()``) of image ``image`` (all images: None).
        """
        att = self.image_attention(example, image).mean(2)  # [L, H, V]
        idx = [(self.layers.index(l), self.heads.index(h)) for l, h in self.resolve_heads(heads, layers)]
        return torch.stack([att[i, j] for i, j in idx]).mean(0)

    # --------------------------------------------------------------- region share
    def region_share(self, example: int, box: Box | None = None, mask: Any = None, *, heads: HeadSpec = "all",
                     image: int = 0) -> RegionShare:
        """Fraction of image attention on a region given in ORIGINAL image pixels (area-weighted boxes).

        Token j contributes ``a_j * |box_j ∩ region| / |box_j|``; the denominator is the attention on the
        tokens that show some of the image (tokens covering only padding, e.g. LLaVA's pad-to-square
        bands, are not attention on the image).
        """
        im = self.image_layout(example, image)
        boxes = im.grid_boxes().to(torch.float64)
        shown = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).to(torch.float64)
        frac = overlap_fraction(boxes, im.image_size, box=box, mask=mask).to(torch.float64)
        att = self.image_attention(example, image).mean(2).to(torch.float64)  # [L, H, V]

        def share(a: torch.Tensor) -> torch.Tensor:
            return (a * frac).sum(-1) / (a * shown).sum(-1).clamp(min=1e-30)

        agg = self.aggregate(example, heads, image).to(torch.float64)
        aggregated = float(share(agg))
        area = region_area_share(im.image_size, box=box, mask=mask)
        return RegionShare(share(att).float(), share(att.mean(1)).float(), aggregated, area,
                           aggregated / area if area > 0 else float("nan"))

    def compare(self, other: CrossModalAttention, example: int = 0, other_example: int | None = None, *,
                heads: HeadSpec = "all", box: Box | None = None, mask: Any = None) -> dict[str, Any]:
        """Difference of aggregated maps (other − self, [V]) on the same image, and the region-share change.

        The head set is resolved on ``self`` and used for both. Returns ``{"difference": [V], "heads": pairs}``
        plus ``share_a``, ``share_b``, ``share_change`` when a region is given.
        """
        oe = example if other_example is None else other_example
        ia, ib = self.image_layout(example), other.image_layout(oe)
        if ia.image_size != ib.image_size or [(g.rows, g.cols) for g in ia.grids] != [(g.rows, g.cols)
                                                                                       for g in ib.grids]:
            raise ValueError("The two attentions are over different image token grids; compare the same image.")
        pairs = self.resolve_heads(heads)  # one head set for both, chosen on ``self``
        a, b = self.aggregate(example, pairs), other.aggregate(oe, pairs)
        out: dict[str, Any] = {"difference": b - a, "heads": pairs}
        if box is not None or mask is not None:
            ra, rb = self.region_share(example, box, mask, heads=pairs), other.region_share(oe, box, mask, heads=pairs)
            out.update(share_a=ra.aggregated, share_b=rb.aggregated, share_change=rb.aggregated - ra.aggregated)
        return out

    # --------------------------------------------------------------- pictures (plotly; see attention.plots)
    def heatmap(self, example: int = 0, **kwargs: Any) -> Any:
        """Plotly figure of a* over the original image; see :func:`moras_interp.attention.plots.heatmap`."""
        from moras_interp.attention import plots

        return plots.heatmap(self, example, **kwargs)

    def layer_head_grid(self, example: int = 0, **kwargs: Any) -> Any:
        """Layer × head grid of image-attention mass; see :func:`moras_interp.attention.plots.layer_head_grid`."""
        from moras_interp.attention import plots

        return plots.layer_head_grid(self, example, **kwargs)

    def small_multiples(self, example: int = 0, **kwargs: Any) -> Any:
        """One heatmap per layer; see :func:`moras_interp.attention.plots.small_multiples`."""
        from moras_interp.attention import plots

        return plots.small_multiples(self, example, **kwargs)

    def difference(self, other: CrossModalAttention, example: int = 0, **kwargs: Any) -> Any:
        """Map of other − self over the image; see :func:`moras_interp.attention.plots.difference`."""
        from moras_interp.attention import plots

        return plots.difference(self, other, example, **kwargs)

    def _figure(self, kind: str, example: int, **kwargs: Any) -> Any:
        if kind not in FIGURE_KINDS:
            raise ValueError(f"kind={kind!r}: use one of {', '.join(FIGURE_KINDS)}.")
        return getattr(self, kind)(example, **kwargs)

    def save_png(self, path: str | Path, example: int = 0, kind: str = "heatmap", **kwargs: Any) -> Path:
        """Write figure ``kind`` ("heatmap", "layer_head_grid", "small_multiples") as PNG."""
        from moras_interp.viz import save_png

        return save_png(self._figure(kind, example, **kwargs), path)

    def save_html(self, path: str | Path, example: int = 0, kind: str = "heatmap", **kwargs: Any) -> Path:
        """Write figure ``kind`` as a standalone HTML file (plotly.js inlined, works offline)."""
        from moras_interp.viz import save_html

        return save_html(self._figure(kind, example, **kwargs), path)

    # --------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """NPZ (arrays, no pickle) + JSON sidecar (model, prompts, layouts, layers, heads)."""
        from moras_interp.viz.export import save_npz

        meta = {"format": "moras_interp.CrossModalAttention/1", "model_id": self.model_id, "query": self.query,
                "prompts": self.prompts, "layers": self.layers, "heads": self.heads,
                "layouts": [l.to_dict() for l in self.layouts],
                "image_sizes": [[list(im.size) for im in ims] for ims in self.images]}
        arrays = {"rows": self.rows.numpy(), "query_positions": self.query_positions.numpy(),
                  "query_valid": self.query_valid.numpy()}
        for e, ims in enumerate(self.images):
            for i, im in enumerate(ims):
                arrays[f"image_{e}_{i}"] = np.asarray(im.convert("RGB"))
        return save_npz(Path(path), arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> CrossModalAttention:
        """Reload what :meth:`save` wrote (the NPZ path; its ``.json`` sidecar must sit next to it)."""
        from moras_interp.viz.export import load_npz, sidecar_path

        if not Path(path).exists() or not sidecar_path(path).exists():
            raise FileNotFoundError(f"{path} or its metadata {sidecar_path(path)} is missing; pass the .npz "
                                    "written by CrossModalAttention.save().")
        arrays, meta = load_npz(Path(path))
        images = [[Image.fromarray(arrays[f"image_{e}_{i}"]) for i in range(len(s))]
                  for e, s in enumerate(meta["image_sizes"])]
        return cls(rows=torch.from_numpy(arrays["rows"]), query_positions=torch.from_numpy(arrays["query_positions"]),
                   query_valid=torch.from_numpy(arrays["query_valid"]), layers=list(meta["layers"]),
                   heads=list(meta["heads"]), layouts=[TokenLayout.from_dict(d) for d in meta["layouts"]],
                   model_id=meta["model_id"], prompts=list(meta["prompts"]), images=images,
                   query=meta.get("query", ""))

    def to_json(self) -> str:
        """A short JSON summary (model, layers, heads, rows shape)."""
        return json.dumps({"model_id": self.model_id, "layers": self.layers, "heads": self.heads,
                           "shape": list(self.rows.shape)})
