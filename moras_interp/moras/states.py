"""Greedy decoding that records last-position states per step (the primitive behind MoRAS stages 2 and the
unsafe prototype)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from moras_interp.models.finite import check_finite
from moras_interp.models.interventions import HookContext

if TYPE_CHECKING:
    from moras_interp.models.batch import Batch
    from moras_interp.models.mllm import MLLM, Generation

FINAL = "ln_final.hook_normalized"


@torch.no_grad()
def generate_with_states(model: MLLM, batch: Batch, n_steps: int, *, hooks: Sequence[str] = (FINAL,),
                         max_new_tokens: int | None = None) -> tuple[Generation, dict[str, torch.Tensor]]:
    """Greedy generation recording, for steps t < ``n_steps``, each hook's value at the last position.

    Step 0 is the prefill (the state that predicts the first new token), step t the t-th decode step.
    At least ``n_steps`` tokens are generated (EOS is suppressed until then) so every example has
    ``n_steps`` states.

    Returns:
        (generation, {hook: float32 [b, n_steps, d]}).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be ≥ 1, got {n_steps}.")
    rec: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}

    def reader(name: str):
        def fn(v: torch.Tensor, ctx: HookContext) -> None:
            rec[name].append(v[:, -1].detach().float().cpu())
        return fn

    new = max(n_steps, max_new_tokens or n_steps)
    with model.hooks([(h, reader(h)) for h in hooks], steps=range(n_steps)):
        gen = model.generate(batch, max_new_tokens=new, min_new_tokens=n_steps)
    states = {h: torch.stack(v, dim=1) for h, v in rec.items()}
    for h, s in states.items():
        if s.shape[1] != n_steps:
            raise RuntimeError(f"Recorded {s.shape[1]} steps at {h}, expected {n_steps}.")
        check_finite(s, stage=model.stage_name or "generate_with_states", hook=h, examples=batch.prompts,
                     dtype=model.dtype)
    return gen, states
