"""Greedy decoding that records last-position states per step (the primitive behind MoRAS stage 2 and the
unsafe prototype), with the authors' EOS semantics: a sequence that emits EOS before N tokens has only the
steps it generated, marked in a per-step validity mask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.models.finite import check_finite
from moras_interp.models.interventions import HookContext

if TYPE_CHECKING:
    from moras_interp.models.batch import Batch
    from moras_interp.models.mllm import MLLM, Generation

FINAL = "ln_final.hook_out"
EOS_MODES = ("stop", "block")


@dataclass
class StepStates:
    """What :func:`step_states` recorded.

    Attributes:
        generation: the greedy generation (``new_tokens`` [b, ≤ max(N, max_new_tokens)]).
        states: {hook: float32 [b, N, d]}; entries of invalid steps are 0.
        valid: bool [b, N]; step t of row i exists iff row i emitted no EOS among its first t tokens (step 0, the
            prefill, always exists; the step that emits EOS exists, the ones after it do not). Valid steps are a
            prefix of each row. All True with ``eos="block"``.
    """

    generation: Generation
    states: dict[str, torch.Tensor]
    valid: torch.Tensor


def eos_ids(model: MLLM) -> list[int]:
    """The ids that end generation: the model's ``generation_config.eos_token_id`` (an int or a list, as HF
    ``generate`` uses them), else the tokenizer's EOS."""
    gc = getattr(model.hf, "generation_config", None)
    e = getattr(gc, "eos_token_id", None)
    if e is None:
        e = model.tokenizer.eos_token_id
    ids = [e] if isinstance(e, int) else list(e or [])
    return [int(x) for x in ids]


def n_generated(new_tokens: torch.Tensor, tokenizer: Any, eos: Sequence[int] | None = None) -> int:
    """Generated tokens of one row [new] up to and including the first EOS (any of ``eos``, default the
    tokenizer's); padding after it is not counted."""
    stops = set(eos) if eos else {tokenizer.eos_token_id} - {None}
    ids = new_tokens.tolist()
    first = next((j for j, x in enumerate(ids) if x in stops), None)
    if first is not None:
        return first + 1
    pad = tokenizer.pad_token_id
    return sum(1 for x in ids if pad is None or x != pad)


def valid_steps(new_tokens: torch.Tensor, n_steps: int, eos: Sequence[int]) -> torch.Tensor:
    """bool [b, n_steps]: step t exists iff none of ``new_tokens[:, :t]`` is an EOS id (columns past the
    generated length are invalid: every row had stopped)."""
    b = new_tokens.shape[0]
    toks = new_tokens[:, :n_steps].cpu()
    is_eos = torch.isin(toks, torch.tensor(list(eos), dtype=toks.dtype)) if eos else torch.zeros_like(toks, dtype=torch.bool)
    before = torch.cat([torch.zeros(b, 1, dtype=torch.long), is_eos.long().cumsum(1)[:, :-1]], 1)
    valid = torch.zeros(b, n_steps, dtype=torch.bool)
    valid[:, : toks.shape[1]] = before == 0
    return valid


@torch.no_grad()
def step_states(model: MLLM, batch: Batch, n_steps: int, *, hooks: Sequence[str] = (FINAL,),
                max_new_tokens: int | None = None, eos: str = "stop") -> StepStates:
    """Greedy generation recording, for steps t < ``n_steps``, each hook's value at the last position.

    Step 0 is the prefill (the state that predicts the first new token), step t the t-th decode step.
    ``eos="stop"`` (the authors' code): generation stops at EOS, so a row has only the steps up to the one that
    emitted EOS (``valid``); rows that stopped early in a batch are masked, so a batch equals its single runs.
    ``eos="block"``: EOS is suppressed until ``n_steps`` tokens exist, every step is valid.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be ≥ 1, got {n_steps}.")
    if eos not in EOS_MODES:
        raise ValueError(f"stage-2 eos mode {eos!r}: use 'stop' (the authors' code) or 'block'.")
    rec: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}

    def reader(name: str):
        def fn(v: torch.Tensor, ctx: HookContext) -> None:
            rec[name].append(v[:, -1].detach().float().cpu())
        return fn

    new = max(n_steps, max_new_tokens or n_steps)
    extra = {"min_new_tokens": n_steps} if eos == "block" else {}
    with model.hooks([(h, reader(h)) for h in hooks], steps=range(n_steps), read=True):
        gen = model.generate(batch, max_new_tokens=new, **extra)
    b = gen.new_tokens.shape[0]
    valid = torch.ones(b, n_steps, dtype=torch.bool) if eos == "block" else valid_steps(gen.new_tokens, n_steps,
                                                                                         eos_ids(model))
    states = {}
    for h, v in rec.items():
        s = torch.stack(v, dim=1)
        if s.shape[1] > n_steps or (eos == "block" and s.shape[1] != n_steps):
            raise RuntimeError(f"Recorded {s.shape[1]} steps at {h}, expected {n_steps}.")
        s = torch.cat([s, s.new_zeros(b, n_steps - s.shape[1], s.shape[2])], 1) if s.shape[1] < n_steps else s
        s = torch.where(valid[..., None], s, torch.zeros((), dtype=s.dtype))
        check_finite(s, stage=model.stage_name or "step_states", hook=h, examples=batch.prompts, dtype=model.dtype)
        states[h] = s
    return StepStates(gen, states, valid)


def generate_with_states(model: MLLM, batch: Batch, n_steps: int, *, hooks: Sequence[str] = (FINAL,),
                         max_new_tokens: int | None = None) -> tuple[Generation, dict[str, torch.Tensor]]:
    """:func:`step_states` with EOS blocked until ``n_steps`` tokens (every step exists).

    Returns:
        (generation, {hook: float32 [b, n_steps, d]}).
    """
    out = step_states(model, batch, n_steps, hooks=hooks, max_new_tokens=max_new_tokens, eos="block")
    return out.generation, out.states
