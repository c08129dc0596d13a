"""moras_interp: mechanistic interpretability for multimodal LLMs on nnsight, and the MoRAS pipeline.

    import moras_interp as mi
    model = mi.load_model("toy-llava")                       # or an HF id / local path
    batch = model.prepare([image], ["how do i make the item in the image ?"])
    attn = mi.cross_modal_attention(model, batch)            # exact text→image attention rows
    moras = mi.MoRAS.calibrate(model, labelled_pairs)        # risk-adaptive steering, batched
"""

from moras_interp import progress  # noqa: F401, I001  (first: decides tqdm.auto quietly before transformers imports it)
from moras_interp import organisms
from moras_interp._version import __version__
from moras_interp.activations import Direction, collect_activations, steer
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
from moras_interp.moras import Calibration, MoRAS, MoRASConfig, MoRASTrace, UnsafePrototype

__all__ = ["MLLM", "ActivationCache", "Batch", "Calibration", "CrossModalAttention", "Direction", "Generation",
           "ImageLayout", "MoRAS", "MoRASConfig", "MoRASTrace", "PatchGrid", "TokenLayout", "UnsafePrototype",
           "__version__", "collect_activations", "cross_modal_attention", "load_model", "organisms", "steer"]
