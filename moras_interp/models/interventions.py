"""Interventions at canonical hook names, for one forward or for chosen steps of generation.

A hook function receives the hook's value and a :class:`HookContext` and returns a replacement (or
``None`` to keep the value, e.g. after an in-place edit). Steps are counted per top-level forward while
the context is open: step 0 is the prefill (the whole prompt), step t ≥ 1 is the t-th decode step (one
position per example with the KV cache). Hooks restricted to finite steps remove themselves after the
last one, so later decode steps pay nothing.

ONE mechanism serves every edit and every read: per module side (input or output) a single torch hook (a
:class:`_Dispatcher`) applies the edits in installation order and then hands the edited value to the reads
(``install(..., read=True)``: ``run_with_cache``, ``collect_activations``, MoRAS's stage-2 states), so a read
at an edited hook returns the edited value. The hook is registered *first* (``prepend=True``) so that
transformers' output-capturing hooks (which LLaVA / LLaVA-NeXT use to pick their vision feature layer) see
the edited value, as they do for nnsight edits. An nnsight trace reads a module's output *before* torch
hooks run, so ``model.read`` of an output edited here is refused; inside a trace use
``model.read(name)`` / ``model.write(name, value)`` instead.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.models.finite import check_finite, is_finite
from moras_interp.models.hooks import HookPoint
from moras_interp.models.layout import TokenLayout

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


@dataclass
class HookContext:
    """What a hook function knows: the hook name, the step (0 = prefill) and the batch layouts.

    ``ctx.record(value)`` hands a side result (e.g. a displacement norm) to the ``sink`` given to
    ``model.hooks(..., sink=)``; on the nnsight backend it is saved in the graph and delivered after the run, so
    it also comes back from a remote run (a list appended to inside an edit function would stay on the server).
    """

    name: str
    step: int
    layouts: list[TokenLayout] | None = None
    sink: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)

    def record(self, value: Any) -> None:
        if self.sink is not None:
            self.sink(value)


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


@dataclass(eq=False)
class _Entry:
    """One installed function at one hook point, owned by a :class:`_Dispatcher`."""

    point: HookPoint
    fn: HookFn
    read: bool
    context: Callable[[], HookContext | None]  # None while the function's steps are not active
    stage: Callable[[], str]
    dtype: torch.dtype
    dispatcher: _Dispatcher | None = None
    steps: Any = None  # None (every step), "decode" or a frozenset: what the nnsight backend replays
    layouts: list[TokenLayout] | None = None
    sink: Callable[[Any], None] | None = None

    def remove(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.remove(self)
            self.dispatcher = None


def checked_edit(fn: HookFn, value: torch.Tensor, ctx: HookContext, stage: str, dtype: torch.dtype) -> Any:
    """``fn(value, ctx)``; a returned tensor holding NaN/Inf raises :class:`NonFiniteError` naming the hook, the
    stage, the step and whether the value was already non-finite before the edit (both backends use this)."""
    new = fn(value, ctx)
    if isinstance(new, torch.Tensor) and not is_finite(new):
        name = getattr(fn, "__qualname__", type(fn).__name__)
        where = ("the value reaching the edit function {} was already non-finite" if not is_finite(value)
                 else "after the edit function {}").format(name)
        check_finite(new, stage=stage, hook=ctx.name, dtype=dtype, detail=f"step {ctx.step}, {where}")
    return new


_SUSPENDED = False


@contextmanager
def suspended() -> Iterator[None]:
    """While open, installed torch hooks do nothing (the nnsight backend executes the same entries itself)."""
    global _SUSPENDED
    before, _SUSPENDED = _SUSPENDED, True
    try:
        yield
    finally:
        _SUSPENDED = before


class _Dispatcher:
    """Every edit and read at one side (input or output) of one module, behind ONE torch hook.

    The hook is registered first (``prepend=True``) so that transformers' output-capturing hooks see the edited
    value. On each call it applies the active edits in registration order, then gives the edited value to the
    active reads, so a read returns what the rest of the model receives, whenever it was installed.
    """

    def __init__(self, module: torch.nn.Module, io: str) -> None:
        self.module, self.io = module, io
        self.entries: list[_Entry] = []
        if io == "input":
            self._torch = module.register_forward_pre_hook(self._pre, with_kwargs=True, prepend=True)
        else:
            self._torch = module.register_forward_hook(self._post, prepend=True)

    def remove(self, entry: _Entry) -> None:
        if entry in self.entries:
            self.entries.remove(entry)
        if not self.entries:
            self._torch.remove()
            if _DISPATCHERS.get(self.module, {}).get(self.io) is self:
                del _DISPATCHERS[self.module][self.io]

    def _live(self) -> list[tuple[_Entry, HookContext]]:
        if _SUSPENDED:
            return []
        live = [(e, c) for e in self.entries if (c := e.context()) is not None]
        return [x for x in live if not x[0].read] + [x for x in live if x[0].read]

    def _run(self, live: list[tuple[_Entry, HookContext]], value_of: Callable[[HookPoint], torch.Tensor],
             replace: Callable[[HookPoint, torch.Tensor], None]) -> None:
        if _SUSPENDED:  # the nnsight backend runs these entries in its graph instead
            return
        for e, ctx in live:
            value = value_of(e.point)
            if e.read:
                e.fn(value, ctx)
                continue
            new = checked_edit(e.fn, value, ctx, e.stage(), e.dtype)
            if new is not None:  # None: an in-place edit, the logits check downstream catches NaN
                replace(e.point, new)

    def _pre(self, _m: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        live = self._live()
        if not live:
            return None
        state = {"args": args, "kwargs": kwargs}
        key = None if args else ("hidden_states" if "hidden_states" in kwargs else next(iter(kwargs)))

        def value_of(_p: HookPoint) -> torch.Tensor:
            return state["args"][0] if key is None else state["kwargs"][key]

        def replace(_p: HookPoint, v: torch.Tensor) -> None:
            if key is None:
                state["args"] = (v, *state["args"][1:])
            else:
                state["kwargs"] = {**state["kwargs"], key: v}

        self._run(live, value_of, replace)
        return state["args"], state["kwargs"]

    def _post(self, _m: torch.nn.Module, _args: Any, out: Any) -> Any:
        live = self._live()
        if not live:
            return None
        state = {"out": out}

        def value_of(p: HookPoint) -> torch.Tensor:
            o = state["out"]
            if p.index is None:
                return o
            if not isinstance(o, tuple):
                raise TypeError(f"{p.name}: expected a tuple output from {p.module}, got {type(o)}")
            return o[p.index]

        def replace(p: HookPoint, v: torch.Tensor) -> None:
            if p.index is None:
                state["out"] = v
            else:
                items = list(state["out"])
                items[p.index] = v
                state["out"] = tuple(items)

        self._run(live, value_of, replace)
        return state["out"]


_DISPATCHERS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, _Dispatcher]] = weakref.WeakKeyDictionary()


def _attach(module: torch.nn.Module, entry: _Entry) -> _Entry:
    sides = _DISPATCHERS.setdefault(module, {})
    io = entry.point.io
    if io not in sides:
        sides[io] = _Dispatcher(module, io)
    entry.dispatcher = sides[io]
    sides[io].entries.append(entry)
    return entry


def is_edited(model: MLLM, name: str) -> bool:
    """True if an edit (not a read) is installed at hook ``name`` of ``model`` right now."""
    p = model.hook_point(name)
    d = _DISPATCHERS.get(model.adapter.module(p.module), {}).get(p.io)
    return d is not None and any(not e.read and e.point.name == p.name for e in d.entries)


def installed_edits(model: MLLM) -> list[tuple[str, HookFn]]:
    """(hook name, function) of every edit installed on ``model`` right now, in execution then installation order
    (what a run's identity must include: values collected under an edit are not the model's)."""
    out = []
    for n in model.hook_names():
        p = model.hook_point(n)
        d = _DISPATCHERS.get(model.adapter.module(p.module), {}).get(p.io)
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
    stage (``model.stage``) and whether the value was already non-finite before the edit.
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
                "interventions in moras_interp.attention (they edit pre-softmax scores exactly)."
            )
        points.append((point, fn))
    handle._step_handle = model.hf.register_forward_pre_hook(on_step, with_kwargs=True)
    for point, fn in points:
        handle.calls[point.name] = 0

        def context(point: HookPoint = point) -> HookContext | None:
            if not active_now():
                return None
            handle.calls[point.name] += 1
            return HookContext(point.name, max(handle.step, 0), layouts, sink)

        entry = _Entry(point, fn, read, context, lambda: model.stage_name or "forward", model.dtype,
                       steps="decode" if decode_only else (None if allowed is None else frozenset(allowed)),
                       layouts=layouts, sink=sink)
        handle._handles.append(_attach(model.adapter.module(point.module), entry))
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
