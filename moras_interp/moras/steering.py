"""Stage 3 steering: h_t ← h_t + r (u_t − h_t) at the last position, for the first N generated tokens.

Equivalent to logits (1 − r)·W h_t + r·W u_t when ``lm_head`` has no bias. Implemented as an
intervention on ``ln_final.hook_out`` (or any other hook with a matching prototype) restricted
to steps 0..N−1, so it removes itself and later decode steps pay nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from moras_interp.models.interventions import HookContext, InterventionHandle
from moras_interp.moras.states import FINAL

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


@contextmanager
def interpolate_towards(model: MLLM, targets: dict[str, torch.Tensor], strength: torch.Tensor, *,
                        norms: list[torch.Tensor] | None = None,
                        backend: str | None = None) -> Iterator[InterventionHandle]:
    """While open, every generate/forward moves the last position toward ``targets[hook][t]`` at step t.

    Args:
        targets: {hook name: [N, d]} per-step targets (the unsafe prototype u_t).
        strength: float [b] per-example r (0 = no change, 1 = replace with u_t).
        norms: if given, receives one [b] tensor per step and hook: ‖r (u_t − h_t)‖ (displacement), on either
            backend (through ``ctx.record``).
        backend: "hooks" or "nnsight" for the generations inside the block (default ``model.backend``).
    """
    n = {h: int(t.shape[0]) for h, t in targets.items()}
    if len(set(n.values())) != 1:
        raise ValueError(f"All steering targets need the same N; got {n}.")
    steps = next(iter(n.values()))

    def make(hook: str):
        target = targets[hook]

        def fn(v: torch.Tensor, ctx: HookContext) -> torch.Tensor:
            r = strength.to(device=v.device, dtype=torch.float32)
            if r.shape[0] != v.shape[0]:
                raise ValueError(f"strength has {r.shape[0]} entries for a batch of {v.shape[0]}.")
            h = v[:, -1].float()
            delta = r[:, None] * (target[ctx.step].to(v.device).float()[None] - h)
            if norms is not None:
                ctx.record(delta.norm(dim=-1).cpu())
            out = v.clone()
            out[:, -1] = (h + delta).to(v.dtype)
            return out
        return fn

    with model.hooks([(h, make(h)) for h in targets], steps=range(steps),
                     sink=None if norms is None else norms.append) as handle, model.using(backend):
        yield handle


def steering_targets(prototype_states: dict[str, torch.Tensor], hooks: Sequence[str] = (FINAL,)) -> dict[str, torch.Tensor]:
    """Select the prototype tensors for the steering hooks, with a clear error when one is missing."""
    missing = [h for h in hooks if h not in prototype_states]
    if missing:
        raise ValueError(f"The unsafe prototype has no states at {missing}; rebuild it with "
                         f"UnsafePrototype.build(model, ..., hooks={tuple(hooks)!r}).")
    return {h: prototype_states[h] for h in hooks}
