"""MoRAS: prompts, unsafe prototype, risk + calibration, first-N steering, the batched pipeline, traces,
baselines behind the same interface, the authors' setup and variants, and the evaluation runner."""

from moras_interp.moras.baselines import ECSO, AdaShieldS, FixedSteering, Method, NoDefence, adashield_prompt
from moras_interp.moras.config import SETUPS, MoRASConfig
from moras_interp.moras.evaluate import EvalResult, RecordStore, evaluate
from moras_interp.moras.examples import load_examples
from moras_interp.moras.methods import METHODS, MoRASSetup, build_methods, choose_fixed_r, prepare_moras
from moras_interp.moras.pipeline import MoRAS
from moras_interp.moras.presets import AUTHORS_PROMPTS_SHA256, PRESET_INFO, check_preset, prompt_set_sha256
from moras_interp.moras.prototype import UnsafePrototype, default_harmful_prompts, default_harmful_prompts_for
from moras_interp.moras.report import summary_table
from moras_interp.moras.risk import PRESETS, Calibration, similarity
from moras_interp.moras.trace import MoRASTrace
from moras_interp.moras.variants import prototype_direction

__all__ = ["AUTHORS_PROMPTS_SHA256", "ECSO", "METHODS", "PRESETS", "PRESET_INFO", "SETUPS", "AdaShieldS",
           "Calibration", "EvalResult", "FixedSteering", "Method", "MoRAS", "MoRASConfig", "MoRASSetup", "MoRASTrace",
           "NoDefence", "RecordStore", "UnsafePrototype", "adashield_prompt", "build_methods", "check_preset",
           "choose_fixed_r", "default_harmful_prompts", "default_harmful_prompts_for", "evaluate", "load_examples",
           "prepare_moras", "prompt_set_sha256", "prototype_direction", "similarity", "summary_table"]
