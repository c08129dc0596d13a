"""Interventions at canonical hook names, for one forward or for chosen steps of generation.

A hook function receives the hook's value and a :class:`HookContext` and returns a replacement (or
``None`` to keep the value, e.g. after an in-place edit). Steps are counted per top-level forward while
the context is open: step 0 is the prefill (the whole prompt), step t ≥ 1 is the t-th decode step (one
position per example with the KV cache). Hooks restricted to finite steps remove themselves after the
last one, so later decode steps pay nothing.

ONE mechanism serves every edit and every read: per module side (input, output or attention call) a single
torch hook (a :class:`~moras_interp.models.dispatch.Dispatcher`) applies the edits in execution order of their
hooks (installation order per hook) and then hands the edited value to the reads
(``install(..., read=True)``: ``run_with_cache``, ``collect_activations``, MoRAS's stage-2 states), so a read
at an edited hook returns the edited value. The hook is registered *first* (``prepend=True``) so that
transformers' output-capturing hooks (which LLaVA / LLaVA-NeXT use to pick their vision feature layer) see
the edited value, as they do for nnsight edits. An nnsight trace reads a module's output *before* torch
hooks run, so ``model.read`` of an output edited here is refused; inside a trace use
``model.read(name)`` / ``model.write(name, value)`` instead. The same installed entries also run on the
nnsight backend (:mod:`moras_interp.models.graph`: ``generate(..., backend="nnsight")``), which suspends the
torch hooks and executes them inside one intervention graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.models.dispatch import (
    Entry,
    HookContext,
    HookFn,
    attach,
    checked_edit,
    dispatcher_of,
    suspended,
)
from moras_interp.models.hooks import HookPoint
from moras_interp.models.layout import TokenLayout

__all__ = ["HookContext", "HookFn", "InterventionHandle", "Steps", "checked_edit", "edited_hooks", "hooks",
           "install", "installed_edits", "is_edited", "suspended"]

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


Steps = int | Iterable[int] | str | None


def _step_set(steps: Steps) -> set[int] | None:
    """None = every step; ``"prefill"`` = {0}; ``"decode"`` = every step ≥ 1 (returned as None + flag)."""
    if steps is None or steps == "all" or steps == "decode":
        return None
    if steps == "prefill":
        return {0}
    if isinstance(steps, int):
        return {steps}
    if isinstance(steps, str):
        raise ValueError(f"steps={steps!r}: use an int, an iterable of ints, 'all', 'prefill' or 'decode'.")
    return {int(s) for s in steps}


@dataclass
class InterventionHandle:
    """Live handle on installed hooks: ``step`` (current step), ``calls`` per name, ``remove()``."""

    step: int = -1
    calls: dict[str, int] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list)
    _step_handle: Any = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._step_handle is not None:
            self._step_handle.remove()
            self._step_handle = None

    @property
    def active(self) -> bool:
        return bool(self._handles)


def is_edited(model: MLLM, name: str) -> bool:
    """True if an edit (not a read) is installed at hook ``name`` of ``model`` right now."""
    p = model.hook_point(name)
    d = dispatcher_of(model.adapter.module(p.module), p.io)
    return d is not None and any(not e.read and e.point.name == p.name for e in d.entries)


def installed_edits(model: MLLM) -> list[tuple[str, HookFn]]:
    """(hook name, function) of every edit installed on ``model`` right now, in execution then installation order
    (what a run's identity must include: values collected under an edit are not the model's)."""
    out = []
    for n in model.hook_names():
        p = model.hook_point(n)
        d = dispatcher_of(model.adapter.module(p.module), p.io)
        out += [(n, e.fn) for e in (d.entries if d is not None else []) if not e.read and e.point.name == n]
    return out


def edited_hooks(model: MLLM) -> list[str]:
    """Names of the hooks of ``model`` where edits are installed right now, in execution order."""
    return [n for n in model.hook_names() if is_edited(model, n)]


def install(model: MLLM, fwd_hooks: list[tuple[str, HookFn]], *, steps: Steps = None,
            layouts: list[TokenLayout] | None = None, read: bool = False,
            sink: Callable[[Any], None] | None = None) -> InterventionHandle:
    """Installs hooks and returns a handle (call ``handle.remove()``; prefer the ``model.hooks`` context).

    ``read=True``: the functions only observe (their return value is ignored) and run after every edit at
    the same hook, whenever either was installed. Edits run in installation order. An edit that returns a
    value holding NaN/Inf raises :class:`~moras_interp.models.finite.NonFiniteError` naming the hook, the
    stage (``model.stage``) and whether the value was already non-finite before the edit. ``sink`` receives
    what the functions pass to ``ctx.record(value)``.
    """
    allowed = _step_set(steps)
    decode_only = steps == "decode"
    last = max(allowed) if allowed else None
    handle = InterventionHandle()

    def active_now() -> bool:
        s = max(handle.step, 0)  # -1: before the first forward (HF generate may run the vision tower there)
        if decode_only:
            return s >= 1
        return allowed is None or s in allowed

    def on_step(_mod: torch.nn.Module, _args: Any, _kwargs: Any) -> None:
        handle.step += 1
        if last is not None and handle.step > last:
            for h in handle._handles:
                h.remove()
            handle._handles.clear()

    points = []
    for name, fn in fwd_hooks:
        point = model.hook_point(name)
        if point.name.endswith("attn.hook_pattern") and not read:
            raise ValueError(
                f"{name}: attention patterns are not editable through hooks(); use the attention "
                "interventions in moras_interp.attention (they edit pre-softmax scores exactly), or edit "
                f"{point.name.replace('hook_pattern', 'hook_attn_scores')}."
            )
        if point.view == "scores":
            model._check_pattern(point)  # eager only
        points.append((point, fn))
    handle._step_handle = model.hf.register_forward_pre_hook(on_step, with_kwargs=True)
    for point, fn in points:
        handle.calls[point.name] = 0

        def context(point: HookPoint = point) -> HookContext | None:
            if not active_now():
                return None
            handle.calls[point.name] += 1
            return HookContext(point.name, max(handle.step, 0), layouts, sink)

        entry = Entry(point, fn, read, context, lambda: model.stage_name or "forward", model.dtype,
                      steps="decode" if decode_only else (None if allowed is None else frozenset(allowed)),
                      layouts=layouts, sink=sink)
        handle._handles.append(attach(model.adapter.module(point.module), entry))
    return handle


@contextmanager
def hooks(model: MLLM, fwd_hooks: list[tuple[str, HookFn]], *, steps: Steps = None,
          layouts: list[TokenLayout] | None = None, read: bool = False,
          sink: Callable[[Any], None] | None = None) -> Iterator[InterventionHandle]:
    """Context manager around :func:`install`; hooks are removed on exit, also after an exception."""
    h = install(model, fwd_hooks, steps=steps, layouts=layouts, read=read, sink=sink)
    try:
        yield h
    finally:
        h.remove()
