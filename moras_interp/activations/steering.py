"""Steering with directions: add α·v (or project v out) at named hooks, on chosen positions and steps.

    with steer(model, direction, alpha=torch.tensor([4.0, 0.0]), positions="last", layouts=batch.layouts):
        model.generate(batch, max_new_tokens=20)

Positions are chosen at the prefill step from the token layouts ("all" non-padding positions, "last",
"image", "instruction", or a bool mask [b, pos]); at decode steps (one new position per example) the
new position is steered when ``positions`` is "all", "last" or "generated" ("generated" skips the prefill).
``alpha`` may be a float or a per-example tensor [b] (risk-adaptive steering).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.models import interventions as _iv
from moras_interp.models.interventions import HookContext, InterventionHandle, Steps
from moras_interp.models.layout import TokenLayout

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM

DECODE_POSITIONS = ("all", "last", "generated")


def direction_hooks(direction: Any, layers: list[int] | None = None) -> dict[str, torch.Tensor]:
    """{hook name: [d]} from a ``Direction`` (vectors [L, d], layers, hook template) or a plain dict."""
    if isinstance(direction, dict):
        return {k: torch.as_tensor(v) for k, v in direction.items()}
    chosen = direction.layers if layers is None else layers
    return {direction.hook.format(l=l): direction.vectors[direction.layers.index(l)] for l in chosen}


def position_mask(positions: Any, layouts: list[TokenLayout] | None, shape: tuple[int, int]) -> torch.Tensor:
    """bool [b, pos] of prefill positions to steer."""
    b, n = shape
    if isinstance(positions, torch.Tensor):
        if positions.dtype != torch.bool or tuple(positions.shape) != (b, n):
            raise ValueError(f"A position mask must be bool [{b}, {n}], got {positions.dtype} {tuple(positions.shape)}.")
        return positions
    if positions == "generated":
        return torch.zeros(b, n, dtype=torch.bool)
    if layouts is None:
        if positions == "all":
            return torch.ones(b, n, dtype=torch.bool)
        if positions == "last":
            m = torch.zeros(b, n, dtype=torch.bool)
            m[:, -1] = True
            return m
        raise ValueError(f"positions={positions!r} needs layouts=batch.layouts.")
    m = torch.zeros(b, n, dtype=torch.bool)
    for i, lay in enumerate(layouts):
        if positions == "all":
            m[i, lay.n_pad:] = True
        elif positions == "last":
            m[i, lay.last] = True
        elif positions == "image":
            m[i, lay.image_positions] = True
        elif positions == "instruction":
            m[i, lay.instruction] = True
        else:
            raise ValueError(f"positions={positions!r}: use all, last, image, instruction, generated or a bool mask.")
    return m


POSITION_NAMES = ("all", "last", "image", "instruction", "generated")


def check_layers(model: MLLM, direction: Any, layers: list[int] | None) -> None:
    """Raise ``ValueError`` for ``layers`` outside the model's range or without a vector in ``direction``."""
    if layers is None:
        return
    if isinstance(direction, dict):
        raise ValueError(f"layers={list(layers)} selects vectors of a Direction; a {{hook name: vector}} dict already "
                         "names its hooks: leave layers out or drop entries from the dict.")
    vision = str(direction.hook).startswith("vision.")
    n = model.adapter.n_vision_layers() if vision else model.n_layers

    def ok(l: Any) -> bool:
        try:
            return not isinstance(l, bool) and 0 <= operator.index(l) < n
        except TypeError:
            return False

    bad = [l for l in layers if not ok(l)]
    if bad:
        raise ValueError(f"layers={list(layers)}: {bad} out of range; {model.model_id or 'the model'} has "
                         f"{'vision ' if vision else ''}layers 0–{n - 1}.")
    missing = [int(l) for l in layers if int(l) not in direction.layers]
    if missing:
        raise ValueError(f"layers={list(layers)}: the direction has no vector for layer(s) {missing}; it has layers "
                         f"{direction.layers} (build it on those layers, or choose among them).")


def steering_hooks(model: MLLM, direction: Any, *, alpha: float | torch.Tensor = 1.0, positions: Any = "all",
                   mode: str = "add", layers: list[int] | None = None) -> list[tuple[str, Any]]:
    """The ``(hook name, fn)`` pairs that :func:`steer` installs (validated up front).

    ``alpha``: float or per-example tensor [b]; ``positions``: one of ``POSITION_NAMES`` or bool [b, pos].
    """
    if mode not in ("add", "project_out"):
        raise ValueError(f"mode={mode!r}: use 'add' or 'project_out'.")
    if not isinstance(positions, torch.Tensor) and positions not in POSITION_NAMES:
        raise ValueError(f"positions={positions!r}: use one of {list(POSITION_NAMES)} or a bool mask [b, pos].")
    alpha_t = torch.as_tensor(alpha, dtype=torch.float32)
    if alpha_t.ndim > 1 or not bool(torch.isfinite(alpha_t).all()):
        raise ValueError(f"alpha must be a finite float or a per-example tensor [b], got shape {tuple(alpha_t.shape)}.")
    check_layers(model, direction, layers)
    vecs = direction_hooks(direction, layers)
    for name, v in vecs.items():
        model.hook_point(name)
        if v.shape != (model.d_model,) and not name.startswith(("vision.", "projector.")):
            raise ValueError(f"Steering vector for {name} has shape {tuple(v.shape)}, expected ({model.d_model},).")
        if mode == "project_out" and float(v.norm()) == 0.0:
            raise ValueError(f"Steering vector for {name} is zero: project_out needs a non-zero direction.")

    def make(v: torch.Tensor):
        def fn(h: torch.Tensor, ctx: HookContext) -> torch.Tensor:
            a = alpha_t.to(h.device)
            a = a.expand(h.shape[0]) if a.ndim == 0 else a
            if a.shape[0] != h.shape[0]:
                raise ValueError(f"alpha has {a.shape[0]} entries for a batch of {h.shape[0]}.")
            if ctx.step > 0 and h.shape[1] == 1:
                on = isinstance(positions, str) and positions in DECODE_POSITIONS
                mask = torch.full(h.shape[:2], on, dtype=torch.bool)
            else:
                mask = position_mask(positions, ctx.layouts, (h.shape[0], h.shape[1]))
            mask = mask.to(h.device)
            vv = v.to(device=h.device, dtype=torch.float32)
            hf = h.float()
            if mode == "add":
                delta = a[:, None, None] * vv
            else:
                u = vv / vv.norm().clamp(min=1e-12)
                delta = -a[:, None, None] * (hf @ u)[..., None] * u
            return torch.where(mask[..., None], hf + delta, hf).to(h.dtype)
        return fn

    return [(n, make(v)) for n, v in vecs.items()]


def add_steering(model: MLLM, direction: Any, *, alpha: float | torch.Tensor = 1.0, positions: Any = "all",
                 mode: str = "add", steps: Steps = None, layouts: list[TokenLayout] | None = None,
                 layers: list[int] | None = None) -> InterventionHandle:
    """Like :func:`steer` but returns the live handle; call ``handle.remove()`` when done."""
    fwd = steering_hooks(model, direction, alpha=alpha, positions=positions, mode=mode, layers=layers)
    return _iv.install(model, fwd, steps=steps, layouts=layouts)


@contextmanager
def steer(model: MLLM, direction: Any, *, alpha: float | torch.Tensor = 1.0, positions: Any = "all",
          mode: str = "add", steps: Steps = None, layouts: list[TokenLayout] | None = None,
          layers: list[int] | None = None, backend: str | None = None) -> Iterator[InterventionHandle]:
    """Steer while the block is open (forward passes and every generation step selected by ``steps``).

    ``mode="add"``: h ← h + α v. ``mode="project_out"``: h ← h − α (h·v̂) v̂ (α = 1 removes the component).
    ``steps``: None/"all" every forward, "prefill" (= 0), "decode" (≥ 1), an int or ints (0 = prefill,
    t = t-th decode step); hooks limited to finite steps remove themselves after the last one.
    The hooks are removed on exit, also after an exception. ``backend``: run the generations inside the block on
    "hooks" or "nnsight" (default: the model's, ``model.backend``; same tokens either way).
    """
    fwd = steering_hooks(model, direction, alpha=alpha, positions=positions, mode=mode, layers=layers)
    with model.hooks(fwd, steps=steps, layouts=layouts) as h, model.using(backend):
        yield h
