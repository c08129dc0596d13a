"""``CrossModalAttention``: text→image attention rows with head sets, region share and pictures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from moras_interp.attention.region import overlap_fraction, region_area_share
from moras_interp.models.layout import TokenLayout

Box = tuple[float, float, float, float]


@dataclass
class RegionShare:
    """Share of image attention on a region.

    Attributes:
        per_head: float [L, H] share of each head's image attention that lands on the region.
        aggregated: share of the head-set-averaged map a* (see :meth:`CrossModalAttention.aggregate`).
        area_share: the region's fraction of the image area.
        ratio: aggregated / area_share (1.0 = no better than uniform attention over the image).
    """

    per_head: torch.Tensor
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

    # --------------------------------------------------------------- views
    def image_columns(self, example: int, image: int | None = None, grid_only: bool = True) -> torch.Tensor:
        """Key positions of an image's tokens (all images if ``image`` is None), grid order."""
        lay = self.layouts[example]
        ims = lay.images if image is None else [lay.images[image]]
        if not ims:
            raise ValueError(f"Example {example} has no image.")
        return torch.cat([im.grid_positions() if grid_only else im.positions for im in ims])

    def image_attention(self, example: int, image: int | None = None) -> torch.Tensor:
        """[L, H, r_valid, V]: attention on each image token (grid order), valid query rows only."""
        cols = self.image_columns(example, image)
        r = self.rows[example][:, :, self.query_valid[example]]
        return r[..., cols]

    def image_mass(self, example: int) -> torch.Tensor:
        """[L, H]: attention mass on all image tokens (separators included), mean over query rows."""
        cols = self.layouts[example].image_positions
        return self.rows[example][:, :, self.query_valid[example]][..., cols].sum(-1).mean(-1)

    def text_mass(self, example: int) -> torch.Tensor:
        """[L, H]: attention mass on non-image keys, mean over query rows."""
        return 1.0 - self.image_mass(example)

    # --------------------------------------------------------------- head sets
    def head_set(self, *, top_k: int | None = None, threshold: float | None = None,
                 examples: list[int] | None = None) -> list[tuple[int, int]]:
        """Heads (layer, head) that attend most to the image: top-k by mean image mass, or mass > threshold.

        The MoRAS analysis uses heads whose image-attention mass exceeds ~0.2. Mean over ``examples``.
        """
        if (top_k is None) == (threshold is None):
            raise ValueError("Give exactly one of top_k or threshold.")
        exs = examples if examples is not None else [i for i, l in enumerate(self.layouts) if l.images]
        mass = torch.stack([self.image_mass(e) for e in exs]).mean(0)  # [L, H]
        flat = [(float(mass[i, j]), self.layers[i], self.heads[j]) for i in range(mass.shape[0])
                for j in range(mass.shape[1])]
        flat.sort(key=lambda t: -t[0])
        chosen = flat[:top_k] if top_k is not None else [t for t in flat if t[0] > threshold]
        return [(l, h) for _, l, h in chosen]

    def _resolve_heads(self, heads: Any) -> list[tuple[int, int]]:
        if heads is None or heads == "all":
            return [(l, h) for l in self.layers for h in self.heads]
        if heads == "top-visual":
            return self.head_set(top_k=max(1, len(self.layers) * len(self.heads) // 8))
        return [(int(l), int(h)) for l, h in heads]

    def aggregate(self, example: int, heads: Any = "all", image: int | None = 0) -> torch.Tensor:
        """a*_j [V]: mean over the head set (and valid query rows) of attention on image token j."""
        att = self.image_attention(example, image).mean(2)  # [L, H, V]
        idx = [(self.layers.index(l), self.heads.index(h)) for l, h in self._resolve_heads(heads)]
        return torch.stack([att[i, j] for i, j in idx]).mean(0)

    # --------------------------------------------------------------- region share
    def region_share(self, example: int, box: Box | None = None, mask: Any = None, *, heads: Any = "all",
                     image: int = 0) -> RegionShare:
        """Fraction of image attention on a region given in ORIGINAL image pixels (area-weighted boxes)."""
        im = self.layouts[example].images[image]
        frac = overlap_fraction(im.grid_boxes(), im.image_size, box=box, mask=mask).to(torch.float64)
        att = self.image_attention(example, image).mean(2).to(torch.float64)  # [L, H, V]
        per_head = (att * frac).sum(-1) / att.sum(-1).clamp(min=1e-30)
        agg = self.aggregate(example, heads, image).to(torch.float64)
        aggregated = float((agg * frac).sum() / agg.sum().clamp(min=1e-30))
        area = region_area_share(im.image_size, box=box, mask=mask)
        return RegionShare(per_head.float(), aggregated, area, aggregated / area if area > 0 else float("nan"))

    def compare(self, other: CrossModalAttention, example: int = 0, other_example: int | None = None, *,
                heads: Any = "all", box: Box | None = None, mask: Any = None) -> dict[str, Any]:
        """Difference of aggregated maps (other − self) on the same image, and the region-share change."""
        oe = example if other_example is None else other_example
        a, b = self.aggregate(example, heads), other.aggregate(oe, heads)
        if a.shape != b.shape:
            raise ValueError("The two attentions are over different image token grids; compare the same image.")
        out: dict[str, Any] = {"difference": b - a}
        if box is not None or mask is not None:
            ra, rb = self.region_share(example, box, mask, heads=heads), other.region_share(oe, box, mask, heads=heads)
            out.update(share_a=ra.aggregated, share_b=rb.aggregated, share_change=rb.aggregated - ra.aggregated)
        return out

    # --------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """NPZ (arrays, no pickle) + JSON sidecar (model, prompts, layouts, layers, heads)."""
        from moras_interp.viz.export import save_npz

        meta = {"model_id": self.model_id, "prompts": self.prompts, "layers": self.layers, "heads": self.heads,
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
        from moras_interp.viz.export import load_npz

        arrays, meta = load_npz(Path(path))
        images = [[Image.fromarray(arrays[f"image_{e}_{i}"]) for i in range(len(s))]
                  for e, s in enumerate(meta["image_sizes"])]
        return cls(rows=torch.from_numpy(arrays["rows"]), query_positions=torch.from_numpy(arrays["query_positions"]),
                   query_valid=torch.from_numpy(arrays["query_valid"]), layers=list(meta["layers"]),
                   heads=list(meta["heads"]), layouts=[TokenLayout.from_dict(d) for d in meta["layouts"]],
                   model_id=meta["model_id"], prompts=list(meta["prompts"]), images=images)

    def to_json(self) -> str:
        return json.dumps({"model_id": self.model_id, "layers": self.layers, "heads": self.heads,
                           "shape": list(self.rows.shape)})
