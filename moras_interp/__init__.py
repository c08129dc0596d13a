"""moras_interp: mechanistic interpretability for multimodal LLMs on nnsight, and the MoRAS pipeline."""

from moras_interp.attention import CrossModalAttention, cross_modal_attention
from moras_interp.models import (
    MLLM,
    ActivationCache,
    Batch,
    Generation,
    ImageLayout,
    PatchGrid,
    TokenLayout,
    load_model,
)

__version__ = "0.1.0"

__all__ = ["MLLM", "ActivationCache", "Batch", "CrossModalAttention", "Generation", "ImageLayout", "PatchGrid",
           "TokenLayout", "__version__", "cross_modal_attention", "load_model"]
