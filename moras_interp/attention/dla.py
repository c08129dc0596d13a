"""Direct logit attribution (DLA) of attention heads, split by the source positions each head reads.

Which heads write the logit difference between an answer token and a wrong token (e.g. refusal vs compliance)
at the last prompt position, and how much of each head's contribution comes from attending to image tokens,
text tokens, or the image tokens of a risky region?

Head h of layer l writes ``result_h = z_h W_O[h]`` with ``z_h[q] = sum_k pattern[h, q, k] v_h[k]``, so

    result_h[q] = sum_k pattern[h, q, k] (v_h[k] W_O[h])

and its direct logit attribution (through the final norm with its cached scale, the norm weight folded into the
unembedding direction as in :meth:`~moras_interp.models.cache.ActivationCache.logit_attrs`) splits EXACTLY over the
source positions k. Gemma3's post-attention norm is linear for its cached scale and is folded the same way. The
split is exact for the attention probabilities the model used: ``hook_pattern`` under eager attention, the exact
rows of :func:`~moras_interp.attention.trace.cross_modal_attention` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from moras_interp.attention.region import overlap_fraction
from moras_interp.attention.trace import cross_modal_attention
from moras_interp.models.cache_analysis import token_ids
from moras_interp.models.norm_math import norm_affine

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from moras_interp.models.batch import Batch
    from moras_interp.models.mllm import MLLM

Part = Literal["total", "image", "text", "region"]


@dataclass
class HeadDLA:
    """Per-head direct logit attribution of ``logit[answer] - logit[wrong]`` at one query position per example.

    Attributes:
        total: float [b, L, H], each head's attribution (``image + text`` exactly; padding gets no attention).
        image: float [b, L, H], the part read from image-token positions (every image of the example).
        text: float [b, L, H], the part read from non-image, non-padding positions.
        region: float [b, L, H] or None, the part read from image tokens whose patch box overlaps ``box`` /
            ``mask`` (a subset of ``image``).
        by_source: float [b, L, H, pos], the attribution per source position (sums to ``total``).
        attn_bias: float [b, L], the attention output bias's attribution (zeros when ``o_proj`` has no bias).
        layer_attn: float [b, L], attribution of ``blocks.{l}.hook_attn_out`` (= ``total.sum(-1) + attn_bias``).
        layer_mlp: float [b, L], attribution of ``blocks.{l}.hook_mlp_out``.
        embed: float [b], attribution of the decoder's input sequence (image features merged).
        logit_diff: float [b], the model's own ``logit[answer] - logit[wrong]`` at the query position
            (= ``embed + layer_attn.sum(-1) + layer_mlp.sum(-1)``).
        positions: long [b], the query positions. answer, wrong: long [b] token ids (wrong = -1: logit of answer).
        region_positions: per example, long [n] positions counted as the region (empty without a region).
    """

    total: torch.Tensor
    image: torch.Tensor
    text: torch.Tensor
    region: torch.Tensor | None
    by_source: torch.Tensor
    attn_bias: torch.Tensor
    layer_attn: torch.Tensor
    layer_mlp: torch.Tensor
    embed: torch.Tensor
    logit_diff: torch.Tensor
    positions: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor
    region_positions: list[torch.Tensor]

    def part(self, part: Part = "total", example: int | None = None) -> torch.Tensor:
        """[L, H]: one part for one example, or its mean over the batch (``example=None``)."""
        t = getattr(self, part)
        if t is None:
            raise ValueError("No region was given to head_dla (box= or mask=), so there is no 'region' part.")
        return t.mean(0) if example is None else t[example]

    def top_heads(self, k: int = 10, part: Part = "total", example: int | None = None,
                  by: Literal["abs", "pos", "neg"] = "abs") -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest attribution (``by="abs"``, ``"pos"`` or ``"neg"``) as (layer, head, value)."""
        m = self.part(part, example)
        key = {"abs": m.abs(), "pos": m, "neg": -m}[by].flatten()
        idx = key.argsort(descending=True)[:k]
        return [(int(i) // m.shape[1], int(i) % m.shape[1], float(m.flatten()[i])) for i in idx]

    def table(self, k: int = 10, example: int | None = None) -> Any:
        """pandas DataFrame of the top-``k`` heads by |total|: total, image, text (, region) and the image share."""
        import pandas as pd

        rows = []
        for layer, head, tot in self.top_heads(k, "total", example):
            row = {"head": f"L{layer}H{head}", "total": tot}
            for p in ("image", "text", "region"):
                if getattr(self, p) is not None:
                    row[p] = float(self.part(p, example)[layer, head])  # type: ignore[arg-type]
            rows.append(row)
        return pd.DataFrame(rows).set_index("head")

    def _n(self, example: int | None) -> str:
        """What a figure shows: "b examples" (mean over the batch) or "1, example e"."""
        return f"{self.total.shape[0]} examples" if example is None else f"1, example {example}"

    def heatmap(self, part: Part = "total", example: int | None = None, *, title: str | None = None) -> go.Figure:
        """Layer × head heatmap (diverging, 0 = white) of one part; mean over the batch for ``example=None``;
        the title ends with the n it averages over."""
        from moras_interp.viz.figures import layer_head_grid
        from moras_interp.viz.style import with_n

        m = self.part(part, example)
        lim = float(m.abs().max()) or 1.0
        what = "mean over the batch" if example is None else f"example {example}"
        fig = layer_head_grid(m, title=with_n(title or f"head DLA ({part}), {what}", self._n(example)),
                              zlabel="logit diff", colorscale="RdBu")
        fig.update_traces(zmid=0.0, zmin=-lim, zmax=lim)
        return fig

    def split_figure(self, k: int = 10, example: int | None = None, *, title: str | None = None) -> go.Figure:
        """Stacked bars for the top-``k`` heads: the part read from image vs text tokens (and the region), in the
        house style (:func:`moras_interp.viz.style.style_chart`: n in the title, legend above the data)."""
        import plotly.graph_objects as go

        from moras_interp.viz.style import OKABE_ITO, style_chart

        top = self.top_heads(k, "total", example)
        x = [f"L{layer}H{head}" for layer, head, _ in top]
        parts: list[tuple[str, Part]] = [("image tokens", "image"), ("text tokens", "text")]
        fig = go.Figure([go.Bar(x=x, y=[float(self.part(p, example)[l, h]) for l, h, _ in top], name=n,
                                marker_color=OKABE_ITO[i]) for i, (n, p) in enumerate(parts)])
        if self.region is not None:
            fig.add_trace(go.Scatter(x=x, y=[float(self.part("region", example)[l, h]) for l, h, _ in top],
                                     mode="markers", marker={"symbol": "diamond", "size": 10, "color": OKABE_ITO[6]},
                                     name="of which: risky region"))
        fig.update_layout(barmode="relative")
        return style_chart(fig, title=title or "top heads: where their logit contribution is read from",
                           x_title="head (by |total| contribution)", y_title="logit diff", n=self._n(example),
                           x_kind="category")

def _is_box(box: Any) -> bool:
    return isinstance(box, (tuple, list)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)


def _region_positions(batch: Batch, image: int, box: Any, mask: Any) -> list[torch.Tensor]:
    """Per example: the grid positions of image ``image`` whose patch box overlaps the region (one box / mask for
    every example, or a list with one per example, None = no region for that example)."""
    b = len(batch)
    boxes = [box] * b if box is None or _is_box(box) else list(box)
    masks = [mask] * b if mask is None or isinstance(mask, (np.ndarray, torch.Tensor)) else list(mask)
    if len(boxes) != b or len(masks) != b:
        raise ValueError(f"head_dla: box / mask must be one region or a list of {b} (one per example), got "
                         f"{len(boxes)} boxes and {len(masks)} masks.")
    out = []
    for lay, bx, mk in zip(batch.layouts, boxes, masks, strict=True):
        if (bx is None and mk is None) or len(lay.images) <= image:
            out.append(torch.zeros(0, dtype=torch.long))
            continue
        im = lay.images[image]
        frac = overlap_fraction(im.grid_boxes(), im.image_size, box=None if bx is None else tuple(bx), mask=mk)
        out.append(im.grid_positions()[frac > 0])
    return out


@torch.no_grad()
def head_dla(model: MLLM, batch: Batch, answer: Any, wrong: Any = None, *, box: Any = None,
             mask: np.ndarray | torch.Tensor | None = None, image: int = 0) -> HeadDLA:
    """Direct logit attribution of every head at each example's last prompt position, split by source positions.

    Args:
        model: the wrapped model (eager attention reads ``hook_pattern``; sdpa recomputes the exact rows).
        batch: from ``model.prepare``.
        answer: the token whose logit is attributed (int, single-token string, or one per example).
        wrong: the token subtracted (same forms), or None to attribute the answer's logit alone.
        box / mask: the risky region in ORIGINAL pixels of image ``image`` (``(x0, y0, x1, y1)`` or a bool [H, W]
            mask), one for every example or a list with one per example (None: no region there); region tokens =
            that image's grid tokens whose patch box overlaps it.

    Returns:
        :class:`HeadDLA` (float32, CPU).
    """
    n, b = model.n_layers, len(batch)
    eager = model.attn_implementation == "eager"
    names = ["blocks.0.hook_resid_pre", f"blocks.{n - 1}.hook_resid_post", "blocks.*.attn.hook_v",
             "blocks.*.hook_attn_out", "blocks.*.hook_mlp_out"] + (["blocks.*.attn.hook_pattern"] if eager else [])
    logits, cache = model.run_with_cache(batch, names_filter=names)
    q = torch.tensor([lay.last for lay in batch.layouts])
    ar = torch.arange(b)

    def per_example(tokens: Any) -> torch.Tensor:
        t = token_ids(model, tokens)
        return t.expand(b).clone() if t.ndim == 0 else t

    ans = per_example(answer)
    bad = per_example(wrong) if wrong is not None else torch.full((b,), -1)
    dirs = cache.logit_directions(ans, bad if wrong is not None else None).float()  # [b, d]
    dirs = dirs / cache.ln_scale(None)[ar, q].float().to(dirs.device)  # folds the final norm at the query
    rows = None if eager else cross_modal_attention(model, batch, query=q[:, None]).rows[:, :, :, 0]  # [b, L, H, K]

    def attr(x: torch.Tensor) -> torch.Tensor:  # [b, pos, d] -> [b]
        return (x[ar, q].float().to(dirs.device) * dirs).sum(-1)

    by_source, attn_bias = [], []
    for l in range(n):
        v = cache["v", l].float()  # [b, K, kv, dh]
        w_o = model.weights.W_O(l).detach().float().to(v.device)  # [H, dh, d]
        n_heads = w_o.shape[0]
        v = v.repeat_interleave(n_heads // v.shape[2], dim=2)  # GQA: query head h reads kv head h // group
        p = (cache["pattern", l][ar, :, q] if eager else rows[:, l]).float().to(v.device)  # [b, H, K]
        b_o = model.weights.b_O(l)
        b_o = b_o.detach().float() if b_o is not None else torch.zeros(w_o.shape[-1])
        d_l = dirs.to(v.device)
        post = model.adapter.attn_out[0]
        if post != "self_attn":  # Gemma3: attn_out = post_attention_layernorm(o_proj output), linear for its scale
            z = torch.einsum("bhk,bkhd->bhd", p, v)
            o = torch.einsum("bhd,hdm->bm", z, w_o) + b_o.to(v.device)
            norm = norm_affine(model.adapter.module(f"{model.adapter.decoder}.layers.{l}.{post}"))
            d_l = d_l * norm.weight.to(v.device) / norm.scale(o)
        proj = torch.einsum("hdm,bm->bhd", w_o, d_l)  # each head's read-out of the direction, [b, H, dh]
        by_source.append(p * torch.einsum("bkhd,bhd->bhk", v, proj))  # [b, H, K]
        attn_bias.append((b_o.to(v.device) * d_l).sum(-1))
    src = torch.stack(by_source, 1).cpu()  # [b, L, H, K]
    regions = _region_positions(batch, image, box, mask)

    def group(pos: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([src[e][..., pos[e]].sum(-1) for e in range(b)])

    last_logits = logits[ar, q].float().cpu()
    diff = last_logits[ar, ans] - (last_logits[ar, bad] if wrong is not None else 0.0)
    return HeadDLA(
        total=src.sum(-1), image=group([lay.image_positions for lay in batch.layouts]),
        text=group([lay.text_positions for lay in batch.layouts]),
        region=group(regions) if box is not None or mask is not None else None, by_source=src,
        attn_bias=torch.stack(attn_bias, 1).cpu(),
        layer_attn=torch.stack([attr(cache["attn_out", l]) for l in range(n)], 1).cpu(),
        layer_mlp=torch.stack([attr(cache["mlp_out", l]) for l in range(n)], 1).cpu(),
        embed=attr(cache.inputs_embeds()).cpu(), logit_diff=diff, positions=q, answer=ans, wrong=bad,
        region_positions=regions)
