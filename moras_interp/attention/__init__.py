"""Cross-modal attention: exact rows for chosen queries, head sets, region share, pictures, interventions."""

from moras_interp.attention.result import CrossModalAttention, RegionShare
from moras_interp.attention.trace import cross_modal_attention

__all__ = ["CrossModalAttention", "RegionShare", "cross_modal_attention"]
