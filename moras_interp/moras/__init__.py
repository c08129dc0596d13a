"""MoRAS: prompts, unsafe prototype, risk + calibration, first-N steering, the batched pipeline, traces,
baselines behind the same interface, and the evaluation runner."""

from moras_interp.moras.baselines import ECSO, AdaShieldS, FixedSteering, Method, NoDefence, adashield_prompt
from moras_interp.moras.evaluate import EvalResult, RecordStore, evaluate
from moras_interp.moras.examples import load_examples
from moras_interp.moras.methods import METHODS, MoRASSetup, build_methods, choose_fixed_r, prepare_moras
from moras_interp.moras.pipeline import MoRAS, MoRASConfig
from moras_interp.moras.prototype import UnsafePrototype, default_harmful_prompts, default_harmful_prompts_for
from moras_interp.moras.report import summary_table
from moras_interp.moras.risk import PRESETS, Calibration, similarity
from moras_interp.moras.trace import MoRASTrace

__all__ = ["ECSO", "METHODS", "PRESETS", "AdaShieldS", "Calibration", "EvalResult", "FixedSteering", "Method",
           "MoRAS", "MoRASConfig", "MoRASSetup", "MoRASTrace", "NoDefence", "RecordStore", "UnsafePrototype",
           "adashield_prompt", "build_methods", "choose_fixed_r", "default_harmful_prompts",
           "default_harmful_prompts_for", "evaluate", "load_examples", "prepare_moras", "similarity",
           "summary_table"]
