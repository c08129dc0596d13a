"""Interventions at canonical hook names, for one forward or for chosen steps of generation.

A hook function receives the hook's value and a :class:`HookContext` and returns a replacement (or
``None`` to keep the value, e.g. after an in-place edit). Steps are counted per top-level forward while
the context is open: step 0 is the prefill (the whole prompt), step t ≥ 1 is the t-th decode step (one
position per example with the KV cache). Hooks restricted to finite steps remove themselves after the
last one, so later decode steps pay nothing.

Implemented with plain torch hooks on the same modules nnsight wraps, registered *first* (``prepend=True``)
so that transformers' output-capturing hooks (which LLaVA / LLaVA-NeXT use to pick their vision feature
layer) see the edited value, as they do for nnsight edits; inside an nnsight trace use
``model.read(name)`` / ``model.write(name, value)`` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.models.hooks import HookPoint
from moras_interp.models.layout import TokenLayout

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


@dataclass
class HookContext:
    """What a hook function knows: the hook name, the step (0 = prefill) and the batch layouts."""

    name: str
    step: int
    layouts: list[TokenLayout] | None = None


HookFn = Callable[[torch.Tensor, HookContext], "torch.Tensor | None"]
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


def _apply(point: HookPoint, fn: HookFn, ctx: HookContext, value: torch.Tensor) -> torch.Tensor:
    new = fn(value, ctx)
    return value if new is None else new


def install(model: MLLM, fwd_hooks: list[tuple[str, HookFn]], *, steps: Steps = None,
            layouts: list[TokenLayout] | None = None) -> InterventionHandle:
    """Installs hooks and returns a handle (call ``handle.remove()``; prefer the ``model.hooks`` context)."""
    allowed = _step_set(steps)
    decode_only = steps == "decode"
    last = max(allowed) if allowed else None
    handle = InterventionHandle()

    def active_now() -> bool:
        s = handle.step
        if decode_only:
            return s >= 1
        return allowed is None or s in allowed

    def on_step(_mod: torch.nn.Module, _args: Any, _kwargs: Any) -> None:
        handle.step += 1
        if last is not None and handle.step > last:
            for h in handle._handles:
                h.remove()
            handle._handles.clear()

    handle._step_handle = model.hf.register_forward_pre_hook(on_step, with_kwargs=True)
    for name, fn in fwd_hooks:
        point = model.hook_point(name)
        if point.name.endswith("attn.hook_pattern"):
            raise ValueError(
                f"{name}: attention patterns are not editable through hooks(); use the attention "
                "interventions in moras_interp.attention (they edit pre-softmax scores exactly)."
            )
        module = model.adapter.module(point.module)
        handle.calls[point.name] = 0

        def make(point: HookPoint = point, fn: HookFn = fn) -> tuple[Callable[..., Any], bool]:
            def ctx() -> HookContext:
                handle.calls[point.name] += 1
                return HookContext(point.name, handle.step, layouts)

            if point.io == "input":
                def pre(_m: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
                    if not active_now():
                        return None
                    if args:
                        return (_apply(point, fn, ctx(), args[0]), *args[1:]), kwargs
                    key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
                    return args, {**kwargs, key: _apply(point, fn, ctx(), kwargs[key])}
                return pre, True

            def post(_m: torch.nn.Module, _args: Any, out: Any) -> Any:
                if not active_now():
                    return None
                if point.index is None:
                    return _apply(point, fn, ctx(), out)
                items = list(out) if isinstance(out, tuple) else None
                if items is None:
                    raise TypeError(f"{point.name}: expected a tuple output from {point.module}, got {type(out)}")
                items[point.index] = _apply(point, fn, ctx(), items[point.index])
                return tuple(items)
            return post, False

        hook, is_pre = make()
        # prepend: run before transformers' own output-capturing hooks, which LLaVA-style models read their
        # vision features from (``hidden_states[vision_feature_layer]``); appended hooks would edit a value
        # nobody downstream uses
        if is_pre:
            handle._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True, prepend=True))
        else:
            handle._handles.append(module.register_forward_hook(hook, prepend=True))
    return handle


@contextmanager
def hooks(model: MLLM, fwd_hooks: list[tuple[str, HookFn]], *, steps: Steps = None,
          layouts: list[TokenLayout] | None = None) -> Iterator[InterventionHandle]:
    """Context manager around :func:`install`; hooks are removed on exit, also after an exception."""
    h = install(model, fwd_hooks, steps=steps, layouts=layouts)
    try:
        yield h
    finally:
        h.remove()
