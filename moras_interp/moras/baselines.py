"""Baselines behind the interface of :meth:`MoRAS.run`: each returns one :class:`MoRASTrace` per query.

* :class:`NoDefence` — the original question with the image, nothing else.
* :class:`AdaShieldS` — AdaShield-S (Wang et al., 2024): a static defence prompt added to the question.
  AdaShield appends it (its text refers to "the above instruction"); ``position="prepend"`` puts it first.
* :class:`ECSO` — ECSO-style (Gou et al., 2024), always on: caption the image with a query-aware prompt, then
  answer the caption-augmented question WITHOUT the image (text-only safety takes over). ECSO's own
  harm-aware gate (answer first, let the model judge its answer, caption only if unsafe) is not applied.
* :class:`FixedSteering` — MoRAS stage 3 with the same strength r for every query (stages 1–2 skipped).

Every method records the prompts exactly as sent (chat template applied), per-stage wall time (batch time /
batch size) and token counts, so baselines and MoRAS are compared on the same footing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from moras_interp.models.batch import ImageInput
from moras_interp.moras.pipeline import MoRAS, MoRASConfig
from moras_interp.moras.prompts import ADASHIELD_S_PROMPT, ECSO_CAPTION_PROMPT
from moras_interp.moras.prototype import UnsafePrototype
from moras_interp.moras.states import eos_ids, n_generated
from moras_interp.moras.trace import MoRASTrace
from moras_interp.progress import tqdm

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM

ECSO_ANSWER_TEMPLATE = "{caption} {question}"
"""ECSO-style stage 2 (text only): the caption, then the original question (MoRAS's reformulation format)."""


@runtime_checkable
class Method(Protocol):
    """Anything with ``run(images, questions, *, max_new_tokens, batch_size, progress) -> list[MoRASTrace]``."""

    def run(self, images: Sequence[ImageInput], questions: Sequence[str], *, max_new_tokens: int = 64,
            batch_size: int = 8, progress: bool = True) -> list[MoRASTrace]:
        """Answer each (image, question); one trace per query, in order."""


def check_queries(images: Sequence[ImageInput], questions: Sequence[str], batch_size: int) -> None:
    """Clear errors for an empty batch, mismatched lengths or a bad batch size."""
    if isinstance(questions, str):
        raise TypeError("questions must be a list of strings; wrap a single question in a list.")
    if len(questions) == 0:
        raise ValueError("Got an empty batch of questions: pass at least one (image, question) pair.")
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions: pass one image (or None) per question.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")


def generate_stage(model: MLLM, traces: Sequence[MoRASTrace], images: Sequence[ImageInput] | None,
                   prompts: Sequence[str], stage: str, max_new_tokens: int,
                   generate_kwargs: dict[str, Any] | None = None, system: str | None = None) -> list[str]:
    """One batched greedy generation recorded in ``traces`` under ``stage``; returns the decoded outputs.

    ``system``: system prompt of the conversation (``MoRASConfig.system``; the authors' setup sends LLaVA's).

    Records ``prompts[stage]`` (text as sent), ``stage_times[stage]`` (batch seconds / batch size) and
    ``token_counts[stage + "_prompt" / "_new"]``.
    """
    t0 = time.perf_counter()
    batch = model.prepare(images, list(prompts), system=system)
    with model.stage(f"{traces[0].method if traces else 'baseline'} {stage}"):  # named by finite-check errors
        gen = model.generate(batch, max_new_tokens=max_new_tokens, **(generate_kwargs or {}))
    dt = (time.perf_counter() - t0) / len(traces)
    for i, tr in enumerate(traces):
        tr.prompts[stage] = batch.texts[i]
        tr.stage_times[stage] = dt
        tr.token_counts[f"{stage}_prompt"] = int(batch.inputs["attention_mask"][i].sum())
        tr.token_counts[f"{stage}_new"] = n_generated(gen.new_tokens[i], model.tokenizer, eos_ids(model))
    return gen.texts


class _PromptBaseline:
    """Shared batching loop: subclasses fill ``_answer_batch(traces, images)``."""

    name = "baseline"

    def __init__(self, model: MLLM, *, generate_kwargs: dict[str, Any] | None = None,
                 system: str | None = None) -> None:
        self.model = model
        self.generate_kwargs = dict(generate_kwargs or {})
        self.system = system

    def _config(self) -> dict[str, Any]:
        return {}

    def _generate(self, traces: list[MoRASTrace], images: Sequence[ImageInput] | None, prompts: Sequence[str],
                  stage: str, max_new_tokens: int) -> list[str]:
        return generate_stage(self.model, traces, images, prompts, stage, max_new_tokens, self.generate_kwargs,
                              self.system)

    def _answer_batch(self, traces: list[MoRASTrace], images: list[ImageInput], max_new_tokens: int) -> None:
        raise TypeError(f"{type(self).__name__} must implement _answer_batch")  # pragma: no cover

    def run(self, images: Sequence[ImageInput], questions: Sequence[str], *, max_new_tokens: int = 64,
            batch_size: int = 8, progress: bool = True) -> list[MoRASTrace]:
        """Answer every question, ``batch_size`` at a time; one :class:`MoRASTrace` per query."""
        check_queries(images, questions, batch_size)
        cfg = self._config()
        traces = [MoRASTrace(question=q, method=self.name, config=dict(cfg), image_size=getattr(im, "size", None))
                  for im, q in zip(images, questions)]
        for i in tqdm(range(0, len(traces), batch_size), desc=self.name, disable=not progress):
            self._answer_batch(traces[i : i + batch_size], list(images[i : i + batch_size]), max_new_tokens)
        return traces


class NoDefence(_PromptBaseline):
    """The undefended model: image + original question, greedy."""

    name = "none"

    def _answer_batch(self, traces: list[MoRASTrace], images: list[ImageInput], max_new_tokens: int) -> None:
        answers = self._generate(traces, images, [t.question for t in traces], "answer", max_new_tokens)
        for tr, a in zip(traces, answers):
            tr.answer = a


def adashield_prompt(question: str, prompt: str = ADASHIELD_S_PROMPT, position: str = "append",
                     sep: str = " ") -> str:
    """The AdaShield-S user text: ``question + sep + prompt`` (append) or ``prompt + sep + question`` (prepend)."""
    if position == "append":
        return f"{question}{sep}{prompt}"
    if position == "prepend":
        return f"{prompt}{sep}{question}"
    raise ValueError(f"position={position!r}: use 'append' (AdaShield) or 'prepend'.")


class AdaShieldS(_PromptBaseline):
    """AdaShield-S: a static defence prompt added to every question (see :func:`adashield_prompt`)."""

    name = "adashield"

    def __init__(self, model: MLLM, *, prompt: str = ADASHIELD_S_PROMPT, position: str = "append", sep: str = " ",
                 generate_kwargs: dict[str, Any] | None = None, system: str | None = None) -> None:
        super().__init__(model, generate_kwargs=generate_kwargs, system=system)
        adashield_prompt("", prompt, position, sep)  # validates position
        self.prompt, self.position, self.sep = prompt, position, sep

    def _config(self) -> dict[str, Any]:
        return {"defence_prompt": self.prompt, "position": self.position}

    def _answer_batch(self, traces: list[MoRASTrace], images: list[ImageInput], max_new_tokens: int) -> None:
        texts = [adashield_prompt(t.question, self.prompt, self.position, self.sep) for t in traces]
        answers = self._generate(traces, images, texts, "answer", max_new_tokens)
        for tr, x, a in zip(traces, texts, answers):
            tr.reformulated, tr.answer = x, a


class ECSO(_PromptBaseline):
    """ECSO-style: caption (image + ``caption_prompt``), then answer ``answer_template`` text-only.

    Args:
        caption_prompt: stage-1 text; ``{question}`` is replaced by the query (ECSO's query-aware captioning).
        answer_template: stage-2 text with ``{caption}`` and ``{question}``; sent WITHOUT the image.
        max_caption_tokens: stage-1 budget.
    """

    name = "ecso"

    def __init__(self, model: MLLM, *, caption_prompt: str = ECSO_CAPTION_PROMPT,
                 answer_template: str = ECSO_ANSWER_TEMPLATE, max_caption_tokens: int = 40,
                 generate_kwargs: dict[str, Any] | None = None, system: str | None = None) -> None:
        super().__init__(model, generate_kwargs=generate_kwargs, system=system)
        if "{caption}" not in answer_template or "{question}" not in answer_template:
            raise ValueError("answer_template must contain {caption} and {question}, e.g. '{caption} {question}'.")
        if max_caption_tokens < 1:
            raise ValueError(f"max_caption_tokens must be ≥ 1, got {max_caption_tokens}.")
        self.caption_prompt, self.answer_template = caption_prompt, answer_template
        self.max_caption_tokens = max_caption_tokens

    def _config(self) -> dict[str, Any]:
        return {"caption_prompt": self.caption_prompt, "answer_template": self.answer_template,
                "max_caption_tokens": self.max_caption_tokens}

    def _answer_batch(self, traces: list[MoRASTrace], images: list[ImageInput], max_new_tokens: int) -> None:
        cap_prompts = [self.caption_prompt.replace("{question}", t.question) for t in traces]
        captions = self._generate(traces, images, cap_prompts, "caption", self.max_caption_tokens)
        texts = [self.answer_template.format(caption=c.strip(), question=t.question) for c, t in zip(captions, traces)]
        answers = self._generate(traces, None, texts, "answer", max_new_tokens)
        for tr, c, x, a in zip(traces, captions, texts, answers):
            tr.visual_context, tr.reformulated, tr.answer = c, x, a


class FixedSteering:
    """MoRAS stage 3 with one strength ``r`` for every query (the fixed-strength baseline; no stages 1–2)."""

    name = "fixed"

    def __init__(self, model: MLLM, prototype: UnsafePrototype, r: float, *, config: MoRASConfig | None = None,
                 **overrides: Any) -> None:
        self.r = float(r)
        self.moras = MoRAS(model, prototype, None, config, fixed_r=self.r, **overrides)

    def run(self, images: Sequence[ImageInput], questions: Sequence[str], *, max_new_tokens: int | None = None,
            batch_size: int = 8, progress: bool = True) -> list[MoRASTrace]:
        """See :meth:`MoRAS.run` (``max_new_tokens`` defaults to the config's); every trace has ``risk == r``."""
        check_queries(images, questions, batch_size)
        return self.moras.run(images, questions, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              progress=progress)


__all__ = ["ECSO", "ECSO_ANSWER_TEMPLATE", "AdaShieldS", "FixedSteering", "Method", "NoDefence", "adashield_prompt",
           "check_queries", "generate_stage"]
