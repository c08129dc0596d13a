"""The model layer: load_model, MLLM, hook names, token layouts, adapters."""

from moras_interp.models.batch import Batch
from moras_interp.models.cache import ActivationCache
from moras_interp.models.hooks import HOOK_DOC, HookPoint
from moras_interp.models.interventions import HookContext, InterventionHandle
from moras_interp.models.layout import ImageLayout, PatchGrid, TokenLayout
from moras_interp.models.loading import load_model
from moras_interp.models.mllm import MLLM, Generation

__all__ = ["HOOK_DOC", "MLLM", "ActivationCache", "Batch", "Generation", "HookContext", "HookPoint",
           "ImageLayout", "InterventionHandle", "PatchGrid", "TokenLayout", "load_model"]
