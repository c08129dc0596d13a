"""TransformerLens's ``run_with_hooks``: ``fwd_hooks=[(name_or_filter, fn(value, hook))]`` on the ONE edit mechanism
of :mod:`moras_interp.models.interventions` (the same dispatchers as ``model.hooks``; reads see the edits).

``hook`` is a :class:`TLHook`: ``hook.name``, ``hook.layer()``, ``hook.ctx`` (a dict kept for the run, as in
TransformerLens), plus ``hook.step`` and ``hook.layouts`` from the project's :class:`HookContext`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.models import interventions as _iv
from moras_interp.models.act_names import NamesFilter, resolve_names_filter

if TYPE_CHECKING:
    from moras_interp.models.batch import Batch
    from moras_interp.models.mllm import MLLM

TLHookFn = Callable[..., "torch.Tensor | None"]
"""``fn(value, hook) -> new value | None`` (TransformerLens signature; called as ``fn(value, hook=hook)``)."""


@dataclass
class TLHook:
    """What a TransformerLens hook function receives as ``hook``."""

    name: str
    step: int = 0
    layouts: Any = None
    ctx: dict[str, Any] = field(default_factory=dict)

    def layer(self) -> int:
        """The decoder (or vision) layer index in the name; ``ValueError`` for names without one."""
        m = re.search(r"blocks\.(\d+)\.", self.name)
        if m is None:
            raise ValueError(f"Hook {self.name!r} is not inside a layer (no 'blocks.<l>.' in its name).")
        return int(m.group(1))


def _adapt(fn: TLHookFn, hook: TLHook) -> _iv.HookFn:
    def edit(value: torch.Tensor, ctx: _iv.HookContext) -> torch.Tensor | None:
        hook.step, hook.layouts = ctx.step, ctx.layouts
        return fn(value, hook=hook)

    edit.__qualname__ = getattr(fn, "__qualname__", type(fn).__name__)  # named in NaN errors
    return edit


def expand_fwd_hooks(model: MLLM, fwd_hooks: Iterable[tuple[NamesFilter, TLHookFn]]) -> list[tuple[str, _iv.HookFn]]:
    """``(name, project hook fn)`` pairs for ``(name | glob | list | callable filter, TL fn)`` pairs, each name once
    per pair, in execution order."""
    out = []
    for i, pair in enumerate(fwd_hooks):
        if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[1])):
            raise TypeError(f"fwd_hooks[{i}]: expected (name_or_filter, fn(value, hook)), got {pair!r}.")
        target, fn = pair
        for name in resolve_names_filter(target, model.hook_names()):
            out.append((name, _adapt(fn, TLHook(name))))
    return out


class TLRun:
    """Mixin for :class:`~moras_interp.models.mllm.MLLM`: ``run_with_hooks`` and ``reset_hooks``."""

    _tl_handles: list[_iv.InterventionHandle]

    @torch.no_grad()
    def run_with_hooks(self: MLLM, batch: Batch | dict[str, Any], fwd_hooks: Iterable[tuple[NamesFilter, TLHookFn]] = (),
                       *, reset_hooks_end: bool = True) -> torch.Tensor:
        """One forward with TransformerLens-style edits; returns logits [b, pos, vocab].

        ``fwd_hooks``: ``[(name_or_filter, fn)]`` where the filter is a hook name, a glob, a list of them or a callable
        ``name -> bool``, and ``fn(value, hook)`` returns the new value or None (in-place edit / observer).
        ``reset_hooks_end=False`` leaves the edits installed (for every later forward, generation included) until
        :meth:`reset_hooks`.
        """
        handle = _iv.install(self, expand_fwd_hooks(self, fwd_hooks))
        try:
            return self.forward(batch)
        finally:
            if reset_hooks_end:
                handle.remove()
            else:
                self._tl_handles = [*getattr(self, "_tl_handles", []), handle]

    def reset_hooks(self) -> None:
        """Remove the edits left installed by ``run_with_hooks(..., reset_hooks_end=False)``."""
        for h in getattr(self, "_tl_handles", []):
            h.remove()
        self._tl_handles = []
