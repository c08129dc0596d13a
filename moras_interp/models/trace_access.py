"""``model.read`` / ``model.write`` inside an nnsight trace, for plain and derived hook points.

Plain points are a module's ``.input`` / ``.output`` (or one element of it). Derived points go through the
same functions as the torch-hook path (:mod:`moras_interp.models.derived_hooks`) applied to the values the
trace exposes: per-head views reshape, the norm and ``hook_result`` values are computed from the module's
input and written back as its output, ``hook_resid_mid`` is copied into the pre-MLP norm's input in place.
Attention-call points (``hook_rot_q``, ``hook_rot_k``, ``hook_attn_scores``) are refused with the alternative.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moras_interp.models.attn_call import trace_refusal
from moras_interp.models.derived_hooks import Site, get_value, put_value
from moras_interp.models.hooks import HookPoint

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


def trace_read(model: MLLM, p: HookPoint) -> Any:
    """Inside a trace: the value of hook ``p`` (shapes as in the hook table)."""
    if p.io == "call":
        raise trace_refusal(p.name)
    env = model.envoy(p.module)
    if p.view is None or p.view == "inplace":
        if p.io == "input":
            return env.input
        return env.output if p.index is None else env.output[p.index]
    module = model.adapter.module(p.module)
    if p.view.startswith("heads:"):
        raw = env.input if p.io == "input" else env.output
        return get_value(p, Site(module, (raw,), {}, raw))
    return get_value(p, Site(module, (env.input,), {}))  # norm scale / normalized, per-head result


def trace_write(model: MLLM, p: HookPoint, value: Any) -> None:
    """Inside a trace: replace hook ``p``'s value (same shape) for the rest of the forward."""
    if p.io == "call":
        raise trace_refusal(p.name)
    env = model.envoy(p.module)
    if p.view is None:
        if p.io == "input":
            env.input = value
        elif p.index is None:
            env.output = value
        else:
            env.output[p.index][:] = value
    elif p.view == "inplace":
        env.input[:] = value
    elif p.view.startswith("heads:"):
        if p.io == "input":
            env.input = value.flatten(-2)
        else:
            env.output = value.flatten(-2)
    else:
        site = Site(model.adapter.module(p.module), (env.input,), {})
        site.out = env.output
        put_value(p, site, value)
        env.output = site.out
