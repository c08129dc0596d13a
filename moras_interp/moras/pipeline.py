"""The MoRAS pipeline, batched: visual context → risk → first-N steered answer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from moras_interp.eval.labels import describe, safety_label
from moras_interp.models.batch import ImageInput
from moras_interp.moras.prompts import CONTEXT_PROMPT, SAFETY_PROMPT, reformulate, safety_query
from moras_interp.moras.prototype import UnsafePrototype
from moras_interp.moras.risk import Calibration, similarity
from moras_interp.moras.states import FINAL, generate_with_states
from moras_interp.moras.steering import interpolate_towards, steering_targets
from moras_interp.moras.trace import MoRASTrace

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


@dataclass
class MoRASConfig:
    """Every switch of the method and its ablations (defaults = the official method).

    Attributes:
        n_tokens: N, steps scored in stage 2 and steered in stage 3. gamma: decay γ.
        context_prompt / max_context_tokens: stage 1. use_context: False skips stage 1 (plain question).
        safety_prompt: stage-2 prefix; None scores the reformulated question alone.
        fixed_r: steer every query with this strength and skip stages 1–2 (the fixed-strength baseline).
        risk_mode: "continuous" (r) or "binary" (1 if r ≥ threshold else 0).
        steer_hooks: where stage 3 steers (the prototype must have states there).
        top_k: how many stage-2 next-token probabilities to keep. keep_states: keep stage-2 states.
        keep_attention: also record the exact cross-modal attention of the stage-2 last token, for the
            reformulated prompt and for the "plain" one (safety prompt + question, no context), in
            ``trace.attention`` = {"reformulated": CrossModalAttention, "plain": ..., "index": row of this query}.
        system: system prompt sent in every stage (the prototype must be built with the same); the authors'
            LLaVA-1.5 code uses ``prompts.LLAVA_V1_SYSTEM`` (its vicuna_v1 conversation), llava-hf's template none.
        attention_edits: ``moras_interp.attention.interventions`` edits applied in ``attention_edit_stages``
            ("context", "risk", "answer") — the official code's attention ablations.
    """

    n_tokens: int = 3
    gamma: float = 0.3
    context_prompt: str = CONTEXT_PROMPT
    max_context_tokens: int = 40
    use_context: bool = True
    safety_prompt: str | None = SAFETY_PROMPT
    fixed_r: float | None = None
    risk_mode: str = "continuous"
    threshold: float = 0.5
    steer_hooks: tuple[str, ...] = (FINAL,)
    top_k: int = 5
    keep_states: bool = True
    keep_attention: bool = False
    attention_edits: list[Any] = field(default_factory=list)
    attention_edit_stages: tuple[str, ...] = ("answer",)
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    system: str | None = None

    def check(self) -> None:
        """Raises ``ValueError`` naming the bad option."""
        if self.n_tokens < 1:
            raise ValueError(f"n_tokens must be ≥ 1, got {self.n_tokens}.")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}.")
        if self.fixed_r is not None and not 0.0 <= self.fixed_r <= 1.0:
            raise ValueError(f"fixed_r must be in [0, 1] (0 = no steering, 1 = replace by u_t), got {self.fixed_r}.")
        if self.risk_mode not in ("continuous", "binary"):
            raise ValueError(f"risk_mode={self.risk_mode!r}: use 'continuous' or 'binary'.")
        if self.max_context_tokens < 1:
            raise ValueError(f"max_context_tokens must be ≥ 1, got {self.max_context_tokens}.")
        bad = sorted(set(self.attention_edit_stages) - {"context", "risk", "answer"})
        if bad:
            raise ValueError(f"attention_edit_stages {bad}: use 'context', 'risk' and/or 'answer'.")


def unpack_examples(items: Sequence[Any], *, labels: bool = True) -> tuple[list[Any], list[str], list[bool]]:
    """(images, questions, is_unsafe) from (image, question, label) tuples or objects with .image/.text/.label.

    Labels follow the one label rule (:func:`moras_interp.eval.labels.safety_label`: "unsafe"/"harmful"/1/True,
    "safe"/"benign"/0/False, case and spaces ignored; a utility example with a gold answer and no label is safe;
    anything else is an error naming the example). ``labels=False`` reads no labels (is_unsafe all False), for
    unlabelled data.
    """
    ims, qs, ys = [], [], []
    for i, it in enumerate(items):
        if isinstance(it, (tuple, list)):
            im, q, _ = it
        else:
            im = it.load_image() if hasattr(it, "load_image") else it.image
            q = getattr(it, "text", None) or it.question
        ims.append(im)
        qs.append(q)
        ys.append(safety_label(it, where=describe(it, i)) == "unsafe" if labels else False)
    return ims, qs, ys


_examples = unpack_examples  # the old private name, still imported by tests


def _n_new(new_tokens: torch.Tensor, tokenizer: Any) -> int:
    """Generated tokens of one row up to and including the first EOS (padding after it is not counted)."""
    eos = tokenizer.eos_token_id
    ids = new_tokens.tolist()
    if eos is not None and eos in ids:
        return ids.index(eos) + 1
    pad = tokenizer.pad_token_id
    return sum(1 for x in ids if pad is None or x != pad)


class MoRAS:
    """Risk-adaptive steering (arXiv 2510.13698) on an :class:`MLLM`, batched, every stage recorded."""

    def __init__(self, model: MLLM, prototype: UnsafePrototype, calibration: Calibration | None = None,
                 config: MoRASConfig | None = None, **overrides: Any) -> None:
        self.model = model
        self.prototype = prototype
        self.calibration = calibration
        self.config = replace(config) if config is not None else MoRASConfig()  # a copy: overrides stay local
        for k, v in overrides.items():
            if not hasattr(self.config, k):
                raise TypeError(f"Unknown MoRAS option {k!r}; see MoRASConfig.")
            setattr(self.config, k, v)
        self.config.check()
        prototype.check(model)
        built = prototype.provenance.get("system")
        if built is not None and (built or None) != self.config.system:
            raise ValueError(f"The prototype was built with system prompt {built!r} but this MoRAS sends "
                             f"{self.config.system!r}: build both with the same (UnsafePrototype.build(..., system=)).")
        if prototype.n_tokens != self.config.n_tokens:
            raise ValueError(f"The prototype has N={prototype.n_tokens} steps but n_tokens={self.config.n_tokens}: "
                             "rebuild it with UnsafePrototype.build(model, n_tokens=...).")
        self.targets = steering_targets(prototype.states, self.config.steer_hooks)
        self.calibration_traces: list[MoRASTrace] = []
        """Stage 1–2 traces of the calibration pairs (set by :meth:`calibrate`; label, s and fitted r)."""
        if calibration is None and self.config.fixed_r is None:
            raise ValueError("MoRAS needs a Calibration (MoRAS.calibrate, Calibration.fit or Calibration.preset) "
                             "unless fixed_r is set.")

    # ------------------------------------------------------------------ construction
    @classmethod
    def calibrate(cls, model: MLLM, calibration: Sequence[Any], *, harmful_text: Sequence[str] | None = None,
                  prototype: UnsafePrototype | None = None, method: str = "official", batch_size: int = 8,
                  progress: bool = True, **overrides: Any) -> MoRAS:
        """Build the unsafe prototype (unless given), score the labelled pairs and fit (x0, k).

        ``calibration``: (image, question, label) tuples or objects with ``.image``/``.load_image()``, ``.text``
        and ``.label`` ("unsafe"/"safe"); both classes are required. ``method``: "official" (x0 = mean s,
        k = ln 99 / (1 − x0)) or "logistic". The scored pairs stay in ``calibration_traces``.
        """
        known = {f.name for f in fields(MoRASConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"Unknown MoRAS option(s) {unknown}; see MoRASConfig.")
        cfg = MoRASConfig(**overrides)
        ims, qs, ys = unpack_examples(calibration)
        if not qs:
            raise ValueError("Empty calibration set: give unsafe and safe (image, question, label) pairs.")
        if all(ys) or not any(ys):
            raise ValueError(f"The calibration set needs both classes; got {sum(ys)} unsafe and "
                             f"{len(ys) - sum(ys)} safe examples (labels 'unsafe'/'safe').")
        proto = prototype or UnsafePrototype.build(model, list(harmful_text) if harmful_text else None,
                                                   cfg.n_tokens, progress=progress, system=cfg.system)
        m = cls(model, proto, Calibration(0.0, 1.0), cfg)
        traces = m.assess(ims, qs, batch_size=batch_size, progress=progress)
        m.calibration = Calibration.fit([t.similarity for t in traces], ys, method=method)
        for t, y in zip(traces, ys):
            t.label, t.risk = ("unsafe" if y else "safe"), float(m.calibration.risk(t.similarity or 0.0))
        m.calibration_traces = traces
        return m

    # ------------------------------------------------------------------ stages
    def _edits(self, stage: str, batch: Any) -> Any:
        if not self.config.attention_edits or stage not in self.config.attention_edit_stages:
            return nullcontext()
        from moras_interp.attention.interventions import attention_edits

        return attention_edits(self.model, self.config.attention_edits, layouts=batch.layouts)

    def _chunks(self, n: int, batch_size: int, progress: bool, desc: str) -> Any:
        if n == 0:
            raise ValueError("MoRAS.run got an empty batch of questions.")
        return tqdm(range(0, n, batch_size), desc=desc, disable=not progress)

    def _stage1(self, traces: list[MoRASTrace], images: list[Any]) -> None:
        cfg, t0 = self.config, time.perf_counter()
        batch = self.model.prepare(images, [cfg.context_prompt] * len(traces), system=cfg.system)
        with self._edits("context", batch):
            gen = self.model.generate(batch, max_new_tokens=cfg.max_context_tokens, **cfg.generate_kwargs)
        dt = (time.perf_counter() - t0) / len(traces)
        for i, (tr, text, ctx) in enumerate(zip(traces, batch.texts, gen.texts)):
            tr.prompts["context"], tr.visual_context = text, ctx
            tr.stage_times["context"] = dt
            tr.token_counts["context_prompt"] = int(batch.inputs["attention_mask"][i].sum())
            tr.token_counts["context_new"] = _n_new(gen.new_tokens[i], self.model.tokenizer)

    def _stage2(self, traces: list[MoRASTrace], images: list[Any]) -> torch.Tensor:
        cfg, t0 = self.config, time.perf_counter()
        for tr in traces:
            tr.reformulated = reformulate(tr.visual_context or "", tr.question) if cfg.use_context else tr.question
        batch = self.model.prepare(images, [safety_query(t.reformulated or "", cfg.safety_prompt) for t in traces],
                                   system=cfg.system)
        with self._edits("risk", batch):
            gen, st = generate_with_states(self.model, batch, cfg.n_tokens)
        h = st[FINAL]
        lm_head = self.model.adapter.module(self.model.adapter.lm_head)
        s = similarity(h, self.prototype.final, lm_head, cfg.gamma)
        with torch.no_grad():
            probs = torch.softmax(lm_head(h.to(lm_head.weight.device, lm_head.weight.dtype)).float(), -1).cpu()
        top = probs.topk(min(cfg.top_k, probs.shape[-1]), dim=-1)
        dt = (time.perf_counter() - t0) / len(traces)
        if cfg.keep_attention:
            self._stage2_attention(traces, images, batch)
        tok = self.model.tokenizer
        for i, tr in enumerate(traces):
            tr.prompts["risk"] = batch.texts[i]
            tr.stage2_tokens = [tok.decode([int(x)]) for x in gen.new_tokens[i, : cfg.n_tokens]]
            tr.stage2_topk = [[(tok.decode([int(j)]), float(p)) for p, j in zip(top.values[i, t], top.indices[i, t])]
                              for t in range(cfg.n_tokens)]
            tr.similarity = float(s[i])
            tr.stage_times["risk"] = dt
            tr.token_counts["risk_prompt"] = int(batch.inputs["attention_mask"][i].sum())
            if cfg.keep_states:
                tr.stage2_states = h[i].clone()
        return s

    def _risk_stages(self, traces: list[MoRASTrace], images: list[Any]) -> torch.Tensor:
        """Stage 1 (unless ``use_context`` is off) then stage 2; the similarities s."""
        if self.config.use_context:
            self._stage1(traces, images)
        return self._stage2(traces, images)

    def _stage2_attention(self, traces: list[MoRASTrace], images: list[Any], batch: Any) -> None:
        from moras_interp.attention.trace import cross_modal_attention

        with self._edits("risk", batch):
            reformulated = cross_modal_attention(self.model, batch, query="last")
        plain_batch = self.model.prepare(images, [safety_query(t.question, self.config.safety_prompt) for t in traces],
                                         system=self.config.system)
        with self._edits("risk", plain_batch):
            plain = cross_modal_attention(self.model, plain_batch, query="last")
        for i, tr in enumerate(traces):
            tr.attention = {"reformulated": reformulated, "plain": plain, "index": i}

    def _strength(self, s: torch.Tensor | None, n: int) -> torch.Tensor:
        cfg = self.config
        if cfg.fixed_r is not None:
            return torch.full((n,), float(cfg.fixed_r))
        assert self.calibration is not None and s is not None
        r = self.calibration.risk(s)
        if cfg.risk_mode == "binary":
            r = (r >= cfg.threshold).float()
        elif cfg.risk_mode != "continuous":
            raise ValueError(f"risk_mode={cfg.risk_mode!r}: use 'continuous' or 'binary'.")
        return r

    def _stage3(self, traces: list[MoRASTrace], images: list[Any], r: torch.Tensor, max_new_tokens: int) -> None:
        t0 = time.perf_counter()
        batch = self.model.prepare(images, [t.question for t in traces], system=self.config.system)
        norms: list[torch.Tensor] = []
        steer = interpolate_towards(self.model, self.targets, r, norms=norms) if bool((r != 0).any()) else nullcontext()
        with steer, self._edits("answer", batch):
            gen = self.model.generate(batch, max_new_tokens=max_new_tokens, **self.config.generate_kwargs)
        dt = (time.perf_counter() - t0) / len(traces)
        for i, tr in enumerate(traces):
            tr.prompts["answer"], tr.answer, tr.risk = batch.texts[i], gen.texts[i], float(r[i])
            tr.displacement_norms = [float(n[i]) for n in norms]
            tr.stage_times["answer"] = dt
            tr.token_counts["answer_prompt"] = int(batch.inputs["attention_mask"][i].sum())
            tr.token_counts["answer_new"] = _n_new(gen.new_tokens[i], self.model.tokenizer)

    # ------------------------------------------------------------------ public
    def _new_traces(self, images: Sequence[ImageInput], questions: Sequence[str], method: str) -> list[MoRASTrace]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions.")
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self.config).items()
               if k not in ("generate_kwargs", "attention_edits")}  # JSON-native, so traces round-trip
        cfg["attention_edits"] = [type(e).__name__ for e in self.config.attention_edits]
        return [MoRASTrace(question=q, method=method, config=cfg,
                           image_size=getattr(im, "size", None)) for im, q in zip(images, questions)]

    def assess(self, images: Sequence[ImageInput], questions: Sequence[str], *, batch_size: int = 8,
               progress: bool = True) -> list[MoRASTrace]:
        """Stages 1–2 only: visual context, similarity s and risk r (no answer)."""
        traces = self._new_traces(images, questions, "moras")
        for i in self._chunks(len(traces), batch_size, progress, "MoRAS risk"):
            tr, ims = traces[i : i + batch_size], list(images[i : i + batch_size])
            s = self._risk_stages(tr, ims)
            if self.calibration is not None:
                for t, r in zip(tr, self._strength(s, len(tr))):
                    t.risk = float(r)
        return traces

    def run(self, images: Sequence[ImageInput], questions: Sequence[str], *, max_new_tokens: int = 64,
            batch_size: int = 8, progress: bool = True) -> list[MoRASTrace]:
        """All three stages, ``batch_size`` queries at a time; one :class:`MoRASTrace` per query."""
        method = "fixed_r" if self.config.fixed_r is not None else "moras"
        traces = self._new_traces(images, questions, method)
        for i in self._chunks(len(traces), batch_size, progress, "MoRAS"):
            tr, ims = traces[i : i + batch_size], list(images[i : i + batch_size])
            s = self._risk_stages(tr, ims) if self.config.fixed_r is None else None
            self._stage3(tr, ims, self._strength(s, len(tr)), max_new_tokens)
        return traces
