"""One finite check for every stage: NaN/Inf is an error naming the stage, the hook, the rows and a fix.

    check_finite(logits, stage="MoRAS context", hook="hook_logits", examples=batch.prompts, dtype=model.dtype)

The fix offered depends on the dtype: float16 overflows easily (largest value 65504), so the advice is to
load the model in bfloat16 or float32; in float32/bfloat16 an overflow is implausible, so the advice is to
look for NaN/Inf in the weights, in the edit/steering functions, or in the image preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from transformers import LogitsProcessor


class NonFiniteError(ValueError):
    """NaN/Inf values caught by :func:`check_finite`.

    Attributes:
        stage: the stage that produced them (e.g. ``"MoRAS context"``, ``"run_with_cache"``).
        hook: the hook name (e.g. ``"hook_logits"``), or None.
        rows: the batch rows holding non-finite values.
    """

    def __init__(self, message: str, *, stage: str, hook: str | None, rows: list[int]) -> None:
        super().__init__(message)
        self.stage, self.hook, self.rows = stage, hook, rows


def fix_hint(dtype: torch.dtype | None) -> str:
    """What to do about NaN/Inf in a model running in ``dtype``."""
    if dtype == torch.float16:
        return ("The model runs in float16, which overflows easily (largest value 65504): load it with "
                "dtype=torch.bfloat16 or torch.float32.")
    name = str(dtype).removeprefix("torch.") if dtype is not None else "this dtype"
    return (f"The model runs in {name}, so this is not a float16 overflow: look for NaN/Inf in the weights (check "
            "the checkpoint), in your edit or steering functions (model.hooks, steer, attention edits) or in "
            "the inputs (image preprocessing, pixel_values).")


def bad_rows(t: torch.Tensor, *, logits: bool = False) -> torch.Tensor:
    """bool [b]: rows of ``t`` [b, ...] holding NaN/Inf.

    ``logits=True`` tolerates -inf (masked tokens, e.g. ``min_new_tokens`` or top-k) unless a whole row is -inf.
    """
    flat = t.reshape(t.shape[0], -1) if t.ndim > 0 else t.reshape(1, 1)
    if not logits:
        return ~torch.isfinite(flat).all(1)
    return (torch.isnan(flat) | torch.isposinf(flat)).any(1) | torch.isneginf(flat).all(1)


def is_finite(t: torch.Tensor, *, logits: bool = False) -> bool:
    """One cheap reduction (one device sync): True if ``t`` has no NaN/Inf (see :func:`bad_rows`)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if not logits:
        return bool(torch.isfinite(t).all())
    return not bool(bad_rows(t, logits=True).any())


def describe_rows(rows: list[int], examples: Sequence[str] | None, limit: int = 3) -> str:
    """``"batch rows [0, 2] (row 0: how do i …; row 2: …)"``, at most ``limit`` rows described."""
    text = f"batch row{'s' if len(rows) != 1 else ''} {rows}"
    if examples is None:
        return text
    named = []
    for i in rows[:limit]:
        if i < len(examples):
            ex = str(examples[i])
            named.append(f"row {i}: {ex[:120] + '…' if len(ex) > 120 else ex}")
    more = f", +{len(rows) - limit} more" if len(rows) > limit else ""
    return f"{text} ({'; '.join(named)}{more})" if named else text


def check_finite(t: torch.Tensor, *, stage: str, hook: str | None = None, examples: Sequence[str] | None = None,
                 dtype: torch.dtype | None = None, detail: str = "", logits: bool = False) -> None:
    """Raises :class:`NonFiniteError` if ``t`` [b, ...] holds NaN/Inf; costs one reduction when it does not.

    Args:
        t: values with the batch on axis 0.
        stage: what was running (``"MoRAS context"``, ``"generate"``, ``"collect_activations"`` …).
        hook: the canonical hook name the values come from, if any.
        examples: one description per batch row (the prompt, an example id), used to name the bad rows.
        dtype: the model's dtype (picks the advice, see :func:`fix_hint`); default ``t.dtype``.
        detail: extra context, e.g. ``"generation step 3"``.
        logits: tolerate -inf entries (masked tokens) unless a whole row is -inf.
    """
    if is_finite(t, logits=logits):
        return
    rows = torch.nonzero(bad_rows(t.detach(), logits=logits)).flatten().tolist()
    where = f" at hook {hook!r}" if hook else ""
    extra = f", {detail}" if detail else ""
    raise NonFiniteError(
        f"Non-finite activations (NaN/Inf){where} in stage {stage!r}, {describe_rows(rows, examples)}{extra}. "
        + fix_hint(dtype if dtype is not None else t.dtype),
        stage=stage, hook=hook, rows=rows)


def pixel_hint(inputs: dict) -> str:
    """``"; pixel_values of batch row [1] are already non-finite …"`` when the processed images hold NaN/Inf."""
    pix = inputs.get("pixel_values")
    if not isinstance(pix, torch.Tensor) or is_finite(pix):
        return ""
    if pix.ndim > 0 and pix.shape[0] == inputs["input_ids"].shape[0]:
        rows = torch.nonzero(bad_rows(pix)).flatten().tolist()
        return f"; pixel_values of {describe_rows(rows, None)} are already non-finite (image preprocessing)"
    return "; pixel_values are already non-finite (image preprocessing)"


class FiniteLogits(LogitsProcessor):
    """A logits processor for HF ``generate`` that checks the scores of every step (one reduction per step).

    Raises :class:`NonFiniteError` naming ``stage``, ``hook_logits``, the generation step and the rows.
    """

    def __init__(self, stage: str, examples: Sequence[str] | None, dtype: torch.dtype | None,
                 hint: Callable[[], str] | None = None) -> None:
        self.stage, self.examples, self.dtype, self.hint, self.step = stage, examples, dtype, hint, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step, self.step = self.step, self.step + 1
        if is_finite(scores, logits=True):
            return scores
        hint = self.hint() if self.hint is not None else ""
        check_finite(scores, stage=self.stage, hook="hook_logits", examples=self.examples, dtype=self.dtype,
                     detail=f"generation step {step} (0 = prefill){hint}", logits=True)
        return scores


def check_outputs(values: Mapping[str, torch.Tensor], *, stage: str, padded: Callable[[str], bool],
                  attention_mask: torch.Tensor | None = None, examples: Sequence[str] | None = None,
                  dtype: torch.dtype | None = None) -> None:
    """NaN/Inf in any of ``values`` (hook name → tensor) at a non-padding position → :class:`NonFiniteError`.

    ``padded(name)`` says whether a tensor is [b, pos, ...] (its padding positions, which may be NaN under
    sdpa, are ignored using ``attention_mask`` [b, pos])."""
    for name, v in values.items():
        if is_finite(v):
            continue
        if attention_mask is not None and padded(name):
            m = attention_mask.to(v.device).bool().reshape(*attention_mask.shape, *([1] * (v.ndim - 2)))
            v = torch.where(m, v, torch.zeros((), dtype=v.dtype, device=v.device))
        check_finite(v, stage=stage, hook=name, examples=examples, dtype=dtype)


class StageLabels:
    """Nested labels for what a model is running (``"MoRAS context"``), named by finite-check errors."""

    _stages: list[str]

    @property
    def stage_name(self) -> str | None:
        """The label set by :meth:`stage` (nested labels joined by " / "), or None."""
        return " / ".join(getattr(self, "_stages", [])) or None

    @contextmanager
    def stage(self, name: str, *, default: bool = False) -> Iterator[None]:
        """Label what runs inside the block; ``default=True`` labels only if no label is set (how ``generate``
        and ``run_with_cache`` name themselves)."""
        if not hasattr(self, "_stages"):
            self._stages = []
        push = not (default and self._stages)
        if push:
            self._stages.append(str(name))
        try:
            yield
        finally:
            if push:
                self._stages.pop()
