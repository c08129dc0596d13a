"""User reads and edits inside a MoRAS run, at any named hook and chosen steps of a stage.

    with moras.trace(images, questions, backend="nnsight") as run:
        run.stage("answer").read("blocks.1.hook_resid_post", steps=[0, 1])
        run.stage("answer").write("blocks.1.hook_resid_post", fn, steps="prefill")
    traces = run.traces                                  # the MoRASTrace list, after the block
    traces[0].reads["answer/blocks.1.hook_resid_post/0"] # this query's value at step 0

The block only declares what to do; the pipeline runs on leaving it (as an nnsight trace runs on leaving its
``with``). Each declaration is one ``model.hooks`` entry installed while that stage's generation runs, so it
behaves exactly like the same ``(name, fn)`` given to ``model.hooks`` around that generation, on either backend.
In the answer stage the user's edits run after MoRAS's steering at the same hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.models.interventions import HookContext, HookFn, Steps
from moras_interp.moras.config import STAGES

if TYPE_CHECKING:
    from moras_interp.moras.pipeline import MoRAS
    from moras_interp.moras.trace import MoRASTrace


@dataclass
class UserHook:
    """One declared read or edit: hook name, function (None for a read), steps, read flag."""

    name: str
    fn: HookFn | None
    steps: Steps
    read: bool


@dataclass
class StageHooks:
    """The reads and edits declared for one stage ("context", "risk" or "answer")."""

    stage: str
    run: MoRASRun
    hooks: list[UserHook] = field(default_factory=list)

    def read(self, name: str, *, steps: Steps = None) -> StageHooks:
        """Save the hook's value (after every edit at it) at ``steps`` into each ``trace.reads``."""
        self.run.moras.model.hook_point(name)
        self.hooks.append(UserHook(name, None, steps, True))
        return self

    def write(self, name: str, fn: HookFn, *, steps: Steps = None) -> StageHooks:
        """Edit the hook with ``fn(value, ctx) -> new value | None`` at ``steps`` (as ``model.hooks``)."""
        self.run.moras.model.hook_point(name)
        if not callable(fn):
            raise TypeError(f"write({name!r}, fn): fn must be a function fn(value, ctx), got {type(fn).__name__}.")
        self.hooks.append(UserHook(name, fn, steps, False))
        return self


class MoRASRun:
    """What ``MoRAS.trace`` returns: declare per-stage reads/edits in the block; ``traces`` after it."""

    def __init__(self, moras: MoRAS, images: Sequence[Any], questions: Sequence[str], *, backend: str | None,
                 run_kwargs: dict[str, Any]) -> None:
        self.moras = moras
        self.images, self.questions = list(images), list(questions)
        self.backend = backend
        self.run_kwargs = run_kwargs
        self.stages: dict[str, StageHooks] = {}
        self.traces: list[MoRASTrace] = []

    def stage(self, name: str) -> StageHooks:
        """The declarations of stage ``name`` ("context", "risk" or "answer")."""
        if name not in STAGES:
            raise ValueError(f"stage {name!r}: use one of {', '.join(map(repr, STAGES))}.")
        return self.stages.setdefault(name, StageHooks(name, self))

    def __enter__(self) -> MoRASRun:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            return
        m = self.moras
        before = m.config.backend
        m.config.backend = self.backend if self.backend is not None else before
        m._user = {k: v.hooks for k, v in self.stages.items()}
        try:
            self.traces = m.run(self.images, self.questions, **self.run_kwargs)
        finally:
            m._user, m.config.backend = {}, before


def user_hooks(hooks: list[UserHook], sink: list[tuple[str, int, torch.Tensor]]) -> list[tuple[str, HookFn, Steps, bool]]:
    """``(name, fn, steps, read)`` to install for a stage; reads append (name, step, value on CPU) to ``sink``."""
    out = []
    for h in hooks:
        if h.read:
            def keep(v: torch.Tensor, ctx: HookContext, name: str = h.name) -> None:
                sink.append((name, ctx.step, v.detach().to("cpu", copy=True)))
            out.append((h.name, keep, h.steps, True))
        else:
            assert h.fn is not None
            out.append((h.name, h.fn, h.steps, False))
    return out


def deliver(stage: str, sink: list[tuple[str, int, torch.Tensor]], traces: list[MoRASTrace], layouts: Any,
            per_position: set[str]) -> None:
    """Split each saved batch value into the traces: row i → ``traces[i].reads["<stage>/<hook>/<step>"]``;
    prefill values of ``[b, pos, …]`` hooks (``per_position``) lose their left padding."""
    for name, step, v in sink:
        if v.ndim == 0 or v.shape[0] != len(traces):
            raise ValueError(f"{stage}/{name}: a value of shape {tuple(v.shape)} has no batch axis of "
                             f"{len(traces)} rows; read hooks with one row per query.")
        for i, tr in enumerate(traces):
            row = v[i]
            if step == 0 and name in per_position and layouts is not None:
                row = row[layouts[i].n_pad:]
            tr.reads[f"{stage}/{name}/{step}"] = row.clone()
