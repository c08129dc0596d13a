"""``MoRASConfig``: every switch of the method, its ablations and the authors' variants; named setups."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moras_interp.moras.prompts import CONTEXT_PROMPT, LLAVA_V1_SYSTEM, SAFETY_PROMPT
from moras_interp.moras.risk import MAPPINGS
from moras_interp.moras.scoring import SCORES
from moras_interp.moras.states import EOS_MODES, FINAL

IMAGE_MODES = ("image", "blank", "none")
STAGES = ("context", "risk", "answer")
STEER_MODES = ("interpolate", "direction")


@dataclass
class MoRASConfig:
    """Every switch of the method and its ablations (defaults = the official method; see :meth:`authors`).

    Attributes:
        n_tokens: N, steps scored in stage 2 and steered in stage 3. gamma: decay γ.
        context_prompt / max_context_tokens: stage 1. use_context: False skips stage 1 (plain question).
        safety_prompt: stage-2 prefix; None scores the reformulated question alone.
        stage2_eos: "stop" (the authors' code: greedy stage 2 and the prototype stop at EOS, only existing steps
            are summed) or "block" (EOS suppressed until N tokens).
        score: "cosine" (the paper), "kl" or "ce" (negated divergences, :mod:`moras_interp.moras.scoring`).
        mapping: "sigmoid" (the paper) or "linear" (the sigmoid's tangent at x0, clipped to [0, 1]).
        fixed_r: steer every query with this strength and skip stages 1–2 (the fixed-strength baseline).
        risk_mode: "continuous" (r) or "binary" (1 if r ≥ threshold else 0).
        steer_hooks: where stage 3 steers (the prototype must have states there), e.g.
            ``("blocks.{l}.hook_resid_post",)`` with a prototype built with that hook.
        steer_mode: "interpolate" (h ← h + r (u_t − h), the paper) or "direction" (h ← h + r·direction_scale·v
            at the first N generated positions, ``direction`` = {hook: [d]} or an activations ``Direction``).
        image_mode / image_stages: "image", "blank" (a white image of the same size) or "none" (text only) in
            the listed stages ("context", "risk", "answer"): the authors' image ablations.
        max_new_tokens: answer length used when ``MoRAS.run`` is not given one.
        top_k: how many stage-2 next-token probabilities to keep. keep_states: keep stage-2 states.
        keep_attention: also record the exact cross-modal attention of the stage-2 last token, for the
            reformulated prompt and for the "plain" one (safety prompt + question, no context), in
            ``trace.attention`` = {"reformulated": CrossModalAttention, "plain": ..., "index": row of this query}.
        system: system prompt sent in every stage (the prototype must be built with the same); the authors'
            LLaVA-1.5 code uses ``prompts.LLAVA_V1_SYSTEM`` (its conv_llava_v1 conversation), llava-hf's template none.
        attention_edits: ``moras_interp.attention.interventions`` edits applied in ``attention_edit_stages``
            ("context", "risk", "answer") — the official code's attention ablations.
        backend: how every stage runs: "hooks" (torch hooks, the fast local path), "nnsight" (one nnsight
            intervention graph per generate, also remote) or None (the model's default, ``model.backend``).
            Both give the same tokens, states and risks.
    """

    n_tokens: int = 3
    gamma: float = 0.3
    context_prompt: str = CONTEXT_PROMPT
    max_context_tokens: int = 40
    use_context: bool = True
    safety_prompt: str | None = SAFETY_PROMPT
    stage2_eos: str = "stop"
    score: str = "cosine"
    mapping: str = "sigmoid"
    fixed_r: float | None = None
    risk_mode: str = "continuous"
    threshold: float = 0.5
    steer_hooks: tuple[str, ...] = (FINAL,)
    steer_mode: str = "interpolate"
    direction: Any = None
    direction_scale: float = 1.0
    image_mode: str = "image"
    image_stages: tuple[str, ...] = STAGES
    max_new_tokens: int = 64
    top_k: int = 5
    keep_states: bool = True
    keep_attention: bool = False
    attention_edits: list[Any] = field(default_factory=list)
    attention_edit_stages: tuple[str, ...] = ("answer",)
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    backend: str | None = None

    @classmethod
    def authors(cls, **overrides: Any) -> MoRASConfig:
        """The authors' run (snumprlab/moras, LLaVA-1.5): conv_llava_v1 system message in every stage, N = 3,
        γ = 0.3, 40 context tokens, greedy, stage 2 and prototype stop at EOS, cosine + sigmoid, steering after
        the final norm at the first N generated positions, answers up to 512 new tokens."""
        base = cls(n_tokens=3, gamma=0.3, max_context_tokens=40, stage2_eos="stop", score="cosine",
                   mapping="sigmoid", steer_hooks=(FINAL,), steer_mode="interpolate", max_new_tokens=512,
                   system=LLAVA_V1_SYSTEM, generate_kwargs={})
        for k, v in overrides.items():
            if not hasattr(base, k):
                raise TypeError(f"Unknown MoRAS option {k!r}; see MoRASConfig.")
            setattr(base, k, v)
        return base

    def prototype_hooks(self) -> tuple[str, ...]:
        """The hooks a prototype needs: the final norm (stage 2) and the interpolation targets."""
        return tuple(dict.fromkeys((FINAL, *(self.steer_hooks if self.steer_mode == "interpolate" else ()))))

    def check(self) -> None:
        """Raises ``ValueError`` naming the bad option."""
        if self.n_tokens < 1:
            raise ValueError(f"n_tokens must be ≥ 1, got {self.n_tokens}.")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}.")
        if self.fixed_r is not None and not 0.0 <= self.fixed_r <= 1.0:
            raise ValueError(f"fixed_r must be in [0, 1] (0 = no steering, 1 = replace by u_t), got {self.fixed_r}.")
        for name, value, allowed in (("risk_mode", self.risk_mode, ("continuous", "binary")),
                                     ("stage2_eos", self.stage2_eos, EOS_MODES), ("score", self.score, SCORES),
                                     ("mapping", self.mapping, MAPPINGS), ("steer_mode", self.steer_mode, STEER_MODES),
                                     ("image_mode", self.image_mode, IMAGE_MODES)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: use one of {', '.join(map(repr, allowed))}.")
        if self.max_context_tokens < 1:
            raise ValueError(f"max_context_tokens must be ≥ 1, got {self.max_context_tokens}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}.")
        for name, stages in (("attention_edit_stages", self.attention_edit_stages), ("image_stages", self.image_stages)):
            bad = sorted(set(stages) - set(STAGES))
            if bad:
                raise ValueError(f"{name} {bad}: use 'context', 'risk' and/or 'answer'.")
        if self.backend not in (None, "hooks", "nnsight"):
            raise ValueError(f"backend={self.backend!r}: use 'hooks', 'nnsight' or None (the model's default).")
        if self.steer_mode == "direction" and self.direction is None:
            raise ValueError("steer_mode='direction' needs direction= ({hook: [d]} or an activations Direction), "
                             "e.g. moras.variants.prototype_direction(unsafe, safe).")


SETUPS: dict[str, Callable[..., MoRASConfig]] = {"ours": MoRASConfig, "authors": MoRASConfig.authors}
"""Named configurations: ``SETUPS[name](**overrides)`` (``moras-interp moras --setup``)."""


def resolve_system(spec: str | None) -> str | None:
    """The CLI's ``--system``: "llava_v1" = the conv_llava_v1 system message, "none"/"" = no system prompt,
    anything else = the text itself."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    return LLAVA_V1_SYSTEM if spec.strip().lower() in ("llava_v1", "llava-v1", "conv_llava_v1") else spec
