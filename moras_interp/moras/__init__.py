"""MoRAS: prompts, unsafe prototype, risk + calibration, first-N steering, the batched pipeline, traces."""

from moras_interp.moras.pipeline import MoRAS, MoRASConfig
from moras_interp.moras.prototype import UnsafePrototype, default_harmful_prompts
from moras_interp.moras.risk import PRESETS, Calibration, similarity
from moras_interp.moras.trace import MoRASTrace

__all__ = ["PRESETS", "Calibration", "MoRAS", "MoRASConfig", "MoRASTrace", "UnsafePrototype",
           "default_harmful_prompts", "similarity"]
