"""Cross-modal attention: exact rows for chosen queries, head sets, region share, pictures, interventions.

    attn = cross_modal_attention(model, batch, query="last")      # rows [b, L, H, r, keys], exact
    attn.head_set(threshold=0.2); attn.aggregate(0, heads=0.2)     # H_n and a*
    attn.region_share(0, box=(x0, y0, x1, y1))                     # share of image attention on a region
    attn.heatmap(0, heads="top-visual")                            # plotly figure over the original image
    dla = head_dla(model, batch, "i", "sure", box=(x0, y0, x1, y1))  # per-head logit attribution, image vs text

Figures live in :mod:`moras_interp.attention.plots` (imported on first use, it pulls in plotly).
"""

from moras_interp.attention.dla import HeadDLA, head_dla
from moras_interp.attention.interventions import (
    AttentionEdit,
    BiasImageKeys,
    KnockoutHeads,
    MaskTopImageTokens,
    PAIAmplify,
    ScaleImageAttention,
    attention_edits,
    image_key_mask,
)
from moras_interp.attention.region import overlap_fraction, region_area_share
from moras_interp.attention.result import CrossModalAttention, RegionShare
from moras_interp.attention.rows import rows_from_qk
from moras_interp.attention.trace import cross_modal_attention, query_rows

__all__ = [
    "AttentionEdit",
    "BiasImageKeys",
    "CrossModalAttention",
    "HeadDLA",
    "KnockoutHeads",
    "MaskTopImageTokens",
    "PAIAmplify",
    "RegionShare",
    "ScaleImageAttention",
    "attention_edits",
    "cross_modal_attention",
    "head_dla",
    "image_key_mask",
    "overlap_fraction",
    "query_rows",
    "region_area_share",
    "rows_from_qk",
]
