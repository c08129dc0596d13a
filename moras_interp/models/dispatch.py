"""The one mechanism behind every hook edit and read: one dispatcher per (module, side).

A side is a module's ``"input"`` (a forward pre-hook), its ``"output"`` (a forward hook) or its attention
``"call"`` (:mod:`moras_interp.models.attn_call`). Per call a dispatcher applies the active edits in execution
order of their hook points (a norm's ``hook_scale`` before its ``hook_normalized`` before ``hook_out``), each
point's edits in installation order, then hands the edited values to the active reads, so a read returns what
the rest of the model receives. Derived points (views) are read and written through
:mod:`moras_interp.models.derived_hooks`. The torch hooks are registered *first* (``prepend=True``) so that
transformers' output-capturing hooks see the edited value, as they do for nnsight edits. While
:func:`suspended` is open every dispatcher does nothing: the nnsight backend (:mod:`moras_interp.models.graph`)
then executes the same entries inside its intervention graph, with the same :func:`checked_edit`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from moras_interp.models.derived_hooks import Site, get_value, put_value
from moras_interp.models.finite import check_finite, is_finite
from moras_interp.models.hooks import HookPoint
from moras_interp.models.layout import TokenLayout


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
        """Pass ``value`` to the sink of ``model.hooks(..., sink=)`` (dropped when none was given)."""
        if self.sink is not None:
            self.sink(value)


HookFn = Callable[[torch.Tensor, HookContext], "torch.Tensor | None"]
Getter = Callable[[HookPoint, Any], torch.Tensor]
Putter = Callable[[HookPoint, Any, torch.Tensor], None]


@dataclass(eq=False)
class Entry:
    """One installed function at one hook point, owned by a dispatcher."""

    point: HookPoint
    fn: HookFn
    read: bool
    context: Callable[[], HookContext | None]  # None while the function's steps are not active
    stage: Callable[[], str]
    dtype: torch.dtype
    dispatcher: Dispatcher | None = None
    steps: Any = None  # None (every step), "decode" or a frozenset: what the nnsight backend replays
    layouts: list[TokenLayout] | None = None
    sink: Callable[[Any], None] | None = None

    def remove(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.remove(self)
            self.dispatcher = None


def checked_edit(fn: HookFn, value: torch.Tensor, ctx: HookContext, stage: str, dtype: torch.dtype,
                 lenient: bool = False) -> Any:
    """``fn(value, ctx)``; a returned tensor holding NaN/Inf raises :class:`NonFiniteError` naming the hook, the
    stage, the step and whether the value was already non-finite before the edit (both backends use this).
    ``lenient``: -inf is allowed (masked attention scores, as in TransformerLens)."""
    new = fn(value, ctx)
    if isinstance(new, torch.Tensor) and not is_finite(new, logits=lenient):
        name = getattr(fn, "__qualname__", type(fn).__name__)
        where = ("the value reaching the edit function {} was already non-finite"
                 if not is_finite(value, logits=lenient) else "after the edit function {}").format(name)
        check_finite(new, stage=stage, hook=ctx.name, dtype=dtype, detail=f"step {ctx.step}, {where}")
    return new


_SUSPENDED = False


@contextmanager
def suspended() -> Iterator[None]:
    """While open, every dispatcher does nothing (the nnsight backend executes the same entries in its graph)."""
    global _SUSPENDED
    before, _SUSPENDED = _SUSPENDED, True
    try:
        yield
    finally:
        _SUSPENDED = before


class Dispatcher:
    """Every edit and read at one side (input, output or attention call) of one module."""

    io: str

    def __init__(self, module: torch.nn.Module, io: str) -> None:
        self.module, self.io = module, io
        self.entries: list[Entry] = []
        self._handles = self._register()

    def _register(self) -> list[Any]:
        if self.io == "input":
            return [self.module.register_forward_pre_hook(self._pre, with_kwargs=True, prepend=True)]
        return [self.module.register_forward_hook(self._post, with_kwargs=True, prepend=True)]

    def remove(self, entry: Entry) -> None:
        if entry in self.entries:
            self.entries.remove(entry)
        if not self.entries:
            for h in self._handles:
                h.remove()
            if DISPATCHERS.get(self.module, {}).get(self.io) is self:
                del DISPATCHERS[self.module][self.io]

    def _live(self) -> list[tuple[Entry, HookContext]]:
        """Active (entry, context): edits in hook execution order (stable: installation order per hook), then reads.
        Nothing while :func:`suspended` is open."""
        if _SUSPENDED:
            return []
        live = [(e, c) for e in self.entries if (c := e.context()) is not None]
        edits = sorted((x for x in live if not x[0].read), key=lambda x: x[0].point.order)
        return edits + [x for x in live if x[0].read]

    def _run(self, live: list[tuple[Entry, HookContext]], site: Any, get: Getter = get_value,
             put: Putter = put_value) -> None:
        for e, ctx in live:
            value = get(e.point, site)
            if e.read:
                e.fn(value, ctx)
                continue
            lenient = e.point.view == "scores"  # masked scores are -inf, as in TransformerLens
            new = checked_edit(e.fn, value, ctx, e.stage(), e.dtype, lenient)
            if new is not None:  # None: an observer or an in-place edit; the logits check downstream catches NaN
                put(e.point, site, new)

    def _pre(self, m: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        live = self._live()
        if not live:
            return None
        site = Site(m, args, kwargs)
        self._run(live, site)
        return site.args, site.kwargs

    def _post(self, m: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        live = self._live()
        if not live:
            return None
        site = Site(m, args, kwargs, out)
        self._run(live, site)
        return site.out


DISPATCHERS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Dispatcher]] = weakref.WeakKeyDictionary()


def attach(module: torch.nn.Module, entry: Entry) -> Entry:
    """Adds ``entry`` to the dispatcher of ``module``'s side ``entry.point.io`` (created on first use)."""
    from moras_interp.models.attn_call import CallDispatcher

    sides = DISPATCHERS.setdefault(module, {})
    io = entry.point.io
    if io not in sides:
        sides[io] = CallDispatcher(module, io) if io == "call" else Dispatcher(module, io)
    entry.dispatcher = sides[io]
    sides[io].entries.append(entry)
    return entry


def dispatcher_of(module: torch.nn.Module, io: str) -> Dispatcher | None:
    """The dispatcher at ``module``'s side ``io``, if any function is installed there."""
    return DISPATCHERS.get(module, {}).get(io)
