"""The run identity of a MoRAS evaluation: every option of every method, the judge and the generation settings.

:func:`method_config` describes a method object by everything that changes its answers (MoRAS: its config,
the prototype's and calibration's content; the fixed-strength baseline: r; AdaShield: prompt and position;
ECSO: caption prompt, answer template and caption budget); :func:`evaluation_identity` assembles the
:class:`~moras_interp.identity.RunIdentity` that :func:`moras_interp.moras.evaluate.evaluate` compares before it
resumes a folder. A user method can describe itself with a ``config_dict()`` method; otherwise its class and
public attributes are recorded (:func:`moras_interp.callable_identity.value_identity`: numbers, strings,
tensors, models by content, other objects by type), so define ``config_dict()`` when public attributes hold
run-time state such as counters or test knobs that do not change the answers. A judge function is recorded by its code and the values
it holds (:func:`~moras_interp.callable_identity.callable_identity`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from moras_interp.callable_identity import callable_identity, value_identity
from moras_interp.identity import (
    RunIdentity,
    canonical_json,
    model_fingerprint,
    model_identity,
    processor_fingerprint,
    tensors_fingerprint,
)

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


def prototype_fingerprint(prototype: Any) -> str:
    """sha256 over an :class:`~moras_interp.moras.prototype.UnsafePrototype`'s states, prompts and system prompt."""
    return tensors_fingerprint(prototype.states, list(prototype.prompts),
                               (prototype.provenance or {}).get("system"))


def _config_dict(cfg: Any) -> dict[str, Any]:
    if is_dataclass(cfg):
        return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    return dict(vars(cfg))


def method_config(method: Any) -> dict[str, Any]:
    """JSON-able description of ``method``: its class and every option that changes its answers."""
    from moras_interp.moras.baselines import FixedSteering, _PromptBaseline
    from moras_interp.moras.pipeline import MoRAS

    out: dict[str, Any] = {"class": type(method).__qualname__}
    if hasattr(method, "config_dict"):
        return out | dict(method.config_dict())
    if isinstance(method, FixedSteering):
        return out | {"r": method.r, "moras": method_config(method.moras)}
    if isinstance(method, MoRAS):
        cal = method.calibration
        return out | {"config": _config_dict(method.config), "prototype": prototype_fingerprint(method.prototype),
                      "calibration": None if cal is None else cal.to_dict()}
    if isinstance(method, _PromptBaseline):
        return out | method._config() | {"generate_kwargs": method.generate_kwargs}
    # another method: its public attributes (a wrapped method by its own config), so an option changed is seen
    return out | {k: method_config(v) if hasattr(v, "run") and not isinstance(v, type) else value_identity(v)
                  for k, v in sorted(vars(method).items()) if not k.startswith("_")}


def judge_config(judge: Any) -> dict[str, Any]:
    """The judge's class and its public JSON-able options (keyword lists, prefix-only, ...)."""
    if hasattr(judge, "config_dict"):
        return {"class": type(judge).__qualname__} | dict(judge.config_dict())
    if inspect.isfunction(judge) or inspect.ismethod(judge) or isinstance(judge, functools.partial):
        return {"class": type(judge).__qualname__} | callable_identity(judge)  # a judge function: code + values
    opts = {k: v for k, v in vars(judge).items() if not k.startswith("_")}
    plain = {k: v for k, v in opts.items() if " at 0x" not in canonical_json(v)}
    return {"class": type(judge).__qualname__} | plain


def method_model(method: Any) -> MLLM | None:
    """The model a method runs (``.model``, ``.moras.model`` or a wrapper's ``.inner``), or None."""
    for _ in range(4):
        if hasattr(method, "model") and hasattr(method.model, "hf"):
            return method.model
        method = getattr(method, "moras", None) or getattr(method, "inner", None)
        if method is None:
            return None
    return None


def evaluation_identity(methods: Mapping[str, Any], judge: Any, *, max_new_tokens: int, seed: int | None = None,
                        model: MLLM | None = None, extra: dict[str, Any] | None = None) -> RunIdentity:
    """The :class:`RunIdentity` of an evaluation (the data is checked per example, see ``evaluate``)."""
    models = {id(m): m for m in ([model] if model is not None else [method_model(x) for x in methods.values()])
              if m is not None}
    ident: dict[str, Any] = {}
    processor = None
    if len(models) == 1:
        m = next(iter(models.values()))
        ident = model_identity(m) | {"fingerprint": model_fingerprint(m)}
        processor = processor_fingerprint(m.processor)
    elif models:
        ident = {name: model_fingerprint(m) for name, x in methods.items() if (m := method_model(x)) is not None}
        processor = canonical_json(sorted({processor_fingerprint(m.processor) for m in models.values()}))
    return RunIdentity("evaluation", model=ident, processor=processor,
                       methods={name: method_config(m) for name, m in methods.items()}, seed=seed,
                       judge=judge_config(judge), generation={"max_new_tokens": max_new_tokens, "greedy": True},
                       extra=dict(extra or {}))


__all__ = ["evaluation_identity", "judge_config", "method_config", "method_model", "prototype_fingerprint"]
