"""The MoRAS pipeline, batched: visual context → risk → first-N steered answer.

Options live in :class:`~moras_interp.moras.config.MoRASConfig` (``MoRASConfig.authors()`` = the authors' run).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.models.batch import ImageInput
from moras_interp.moras.compose import MoRASRun, deliver, user_hooks
from moras_interp.moras.config import SETUPS, MoRASConfig
from moras_interp.moras.examples import unpack_examples
from moras_interp.moras.presets import check_preset
from moras_interp.moras.prompts import reformulate, safety_query
from moras_interp.moras.prototype import UnsafePrototype
from moras_interp.moras.risk import Calibration
from moras_interp.moras.scoring import SCORE_MAX, similarity
from moras_interp.moras.states import FINAL, eos_ids, step_states
from moras_interp.moras.states import n_generated as _n_new
from moras_interp.moras.steering import interpolate_towards, steering_targets
from moras_interp.moras.trace import MoRASTrace
from moras_interp.moras.variants import direction_steering, stage_images
from moras_interp.progress import tqdm

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM

__all__ = ["SETUPS", "MoRAS", "MoRASConfig", "unpack_examples"]


_examples = unpack_examples  # the old private name, still imported by tests


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
        if calibration is not None:
            check_preset(calibration, prototype, self.config)
        built = prototype.provenance.get("system")
        if built is not None and (built or None) != self.config.system:
            raise ValueError(f"The prototype was built with system prompt {built!r} but this MoRAS sends "
                             f"{self.config.system!r}: build both with the same (UnsafePrototype.build(..., system=)).")
        built_eos = prototype.provenance.get("eos")
        if built_eos is not None and built_eos != self.config.stage2_eos:
            raise ValueError(f"The prototype was built with eos={built_eos!r} but stage2_eos={self.config.stage2_eos!r}: "
                             "build it with UnsafePrototype.build(..., eos=config.stage2_eos) (EOS semantics must "
                             "match on both sides).")
        if prototype.n_tokens != self.config.n_tokens:
            raise ValueError(f"The prototype has N={prototype.n_tokens} steps but n_tokens={self.config.n_tokens}: "
                             "rebuild it with UnsafePrototype.build(model, n_tokens=...).")
        self.targets = steering_targets(prototype.states, self.config.steer_hooks) \
            if self.config.steer_mode == "interpolate" else {}
        self._user: dict[str, list[Any]] = {}  # MoRAS.trace's per-stage reads/edits while its run executes
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
        k = ln 99 / (s_max − x0), s_max = 1 for the cosine) or "logistic". The scored pairs stay in
        ``calibration_traces``.
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
                                                   cfg.n_tokens, progress=progress, system=cfg.system,
                                                   eos=cfg.stage2_eos, hooks=cfg.prototype_hooks())
        m = cls(model, proto, Calibration(0.0, 1.0), cfg)
        traces = m.assess(ims, qs, batch_size=batch_size, progress=progress)
        m.calibration = Calibration.fit([t.similarity for t in traces], ys, method=method, s_max=SCORE_MAX[cfg.score])
        for t, y in zip(traces, ys):
            t.label = "unsafe" if y else "safe"
            t.risk = float(m.calibration.risk(t.similarity or 0.0, cfg.mapping))
        m.calibration_traces = traces
        return m

    # ------------------------------------------------------------------ stages
    @contextmanager
    def _edits(self, stage: str, batch: Any, traces: list[MoRASTrace] | None = None) -> Iterator[None]:
        """The stage's attention edits (if configured) and the user's reads/edits (``MoRAS.trace``, when ``traces``
        are given), on ``config.backend``, under the stage label finite-check errors name."""
        with ExitStack() as stack:
            stack.enter_context(self.model.stage(f"MoRAS {stage}"))
            stack.enter_context(self.model.using(self.config.backend))
            if self.config.attention_edits and stage in self.config.attention_edit_stages:
                from moras_interp.attention.interventions import attention_edits

                stack.enter_context(attention_edits(self.model, self.config.attention_edits, layouts=batch.layouts))
            sink: list[Any] = []
            for name, fn, steps, read in user_hooks(self._user.get(stage, []) if traces is not None else [], sink):
                stack.enter_context(self.model.hooks([(name, fn)], steps=steps, layouts=batch.layouts, read=read))
            yield
        if sink and traces is not None:
            per_pos = {n for n, _, _ in sink if self.model.hook_point(n).shape.startswith("[b, pos")}
            deliver(stage, sink, traces, batch.layouts, per_pos)

    def _chunks(self, n: int, batch_size: int, progress: bool, desc: str) -> Any:
        if n == 0:
            raise ValueError("MoRAS.run got an empty batch of questions.")
        return tqdm(range(0, n, batch_size), desc=desc, disable=not progress)

    def _images(self, stage: str, images: list[Any]) -> list[Any] | None:
        return stage_images(images, self.config.image_mode, stage, self.config.image_stages)

    def _stage1(self, traces: list[MoRASTrace], images: list[Any]) -> None:
        cfg, t0 = self.config, time.perf_counter()
        batch = self.model.prepare(self._images("context", images), [cfg.context_prompt] * len(traces),
                                   system=cfg.system)
        with self._edits("context", batch, traces):
            gen = self.model.generate(batch, max_new_tokens=cfg.max_context_tokens, **cfg.generate_kwargs)
        dt = (time.perf_counter() - t0) / len(traces)
        for i, (tr, text, ctx) in enumerate(zip(traces, batch.texts, gen.texts)):
            tr.prompts["context"], tr.visual_context = text, ctx
            tr.stage_times["context"] = dt
            tr.token_counts["context_prompt"] = int(batch.inputs["attention_mask"][i].sum())
            tr.token_counts["context_new"] = _n_new(gen.new_tokens[i], self.model.tokenizer, eos_ids(self.model))

    def _stage2(self, traces: list[MoRASTrace], images: list[Any]) -> torch.Tensor:
        cfg, t0 = self.config, time.perf_counter()
        for tr in traces:
            tr.reformulated = reformulate(tr.visual_context or "", tr.question) if cfg.use_context else tr.question
        batch = self.model.prepare(self._images("risk", images),
                                   [safety_query(t.reformulated or "", cfg.safety_prompt) for t in traces],
                                   system=cfg.system)
        with self._edits("risk", batch, traces):
            out = step_states(self.model, batch, cfg.n_tokens, eos=cfg.stage2_eos)
        h, valid = out.states[FINAL], out.valid
        lm_head = self.model.adapter.module(self.model.adapter.lm_head)
        s = similarity(h, self.prototype.final, lm_head, cfg.gamma, valid=valid, score=cfg.score)
        with torch.no_grad():
            probs = torch.softmax(lm_head(h.to(lm_head.weight.device, lm_head.weight.dtype)).float(), -1).cpu()
        top = probs.topk(min(cfg.top_k, probs.shape[-1]), dim=-1)
        dt = (time.perf_counter() - t0) / len(traces)
        if cfg.keep_attention:
            self._stage2_attention(traces, self._images("risk", images), batch)
        tok = self.model.tokenizer
        for i, tr in enumerate(traces):
            steps = int(valid[i].sum())
            tr.prompts["risk"] = batch.texts[i]
            tr.stage2_tokens = [tok.decode([int(x)]) for x in out.generation.new_tokens[i, :steps]]
            tr.stage2_topk = [[(tok.decode([int(j)]), float(p)) for p, j in zip(top.values[i, t], top.indices[i, t])]
                              for t in range(steps)]
            tr.stage2_steps = steps
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

    def _stage2_attention(self, traces: list[MoRASTrace], images: list[Any] | None, batch: Any) -> None:
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
        r = self.calibration.risk(s, cfg.mapping)
        if cfg.risk_mode == "binary":
            r = (r >= cfg.threshold).float()
        elif cfg.risk_mode != "continuous":
            raise ValueError(f"risk_mode={cfg.risk_mode!r}: use 'continuous' or 'binary'.")
        return r

    def _steering(self, r: torch.Tensor, batch: Any, norms: list[torch.Tensor]) -> Any:
        cfg = self.config
        if not bool((r != 0).any()):
            return nullcontext()
        if cfg.steer_mode == "direction":
            return direction_steering(self.model, cfg.direction, r * cfg.direction_scale, cfg.n_tokens, batch.layouts)
        return interpolate_towards(self.model, self.targets, r, norms=norms)

    def _stage3(self, traces: list[MoRASTrace], images: list[Any], r: torch.Tensor, max_new_tokens: int) -> None:
        t0 = time.perf_counter()
        batch = self.model.prepare(self._images("answer", images), [t.question for t in traces],
                                   system=self.config.system)
        norms: list[torch.Tensor] = []
        steer = self._steering(r, batch, norms)
        with steer, self._edits("answer", batch, traces):
            gen = self.model.generate(batch, max_new_tokens=max_new_tokens, **self.config.generate_kwargs)
        dt = (time.perf_counter() - t0) / len(traces)
        if not norms and self.config.steer_mode != "direction":  # steering skipped (every r = 0): zero displacement,
            steps = min(self.config.n_tokens, gen.new_tokens.shape[1])  # as an r = 0 row of a mixed batch records
            norms = [torch.zeros(len(traces))] * (steps * len(self.targets))
        for i, tr in enumerate(traces):
            tr.prompts["answer"], tr.answer, tr.risk = batch.texts[i], gen.texts[i], float(r[i])
            tr.displacement_norms = [float(n[i]) for n in norms]
            tr.stage_times["answer"] = dt
            tr.token_counts["answer_prompt"] = int(batch.inputs["attention_mask"][i].sum())
            tr.token_counts["answer_new"] = _n_new(gen.new_tokens[i], self.model.tokenizer, eos_ids(self.model))

    # ------------------------------------------------------------------ public
    def _new_traces(self, images: Sequence[ImageInput], questions: Sequence[str], method: str) -> list[MoRASTrace]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions.")
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self.config).items()
               if k not in ("generate_kwargs", "attention_edits", "direction")}  # JSON-native, so traces round-trip
        cfg["attention_edits"] = [type(e).__name__ for e in self.config.attention_edits]
        cfg["direction"] = None if self.config.direction is None else type(self.config.direction).__name__
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

    def trace(self, images: Sequence[ImageInput], questions: Sequence[str], *, backend: str | None = None,
              **run_kwargs: Any) -> MoRASRun:
        """``with moras.trace(images, questions) as run:`` declare reads/edits per stage
        (``run.stage("answer").read(hook, steps=...)`` / ``.write(hook, fn, steps=...)``); the pipeline runs on
        leaving the block (``backend`` overrides ``config.backend`` for it) and ``run.traces`` holds the traces,
        with the reads in ``trace.reads``. ``run_kwargs`` go to :meth:`run`. See :mod:`moras_interp.moras.compose`."""
        if backend is not None and backend not in ("hooks", "nnsight"):
            raise ValueError(f"backend={backend!r}: use 'hooks' or 'nnsight'.")
        return MoRASRun(self, images, questions, backend=backend, run_kwargs=run_kwargs)

    def run(self, images: Sequence[ImageInput], questions: Sequence[str], *, max_new_tokens: int | None = None,
            batch_size: int = 8, progress: bool = True) -> list[MoRASTrace]:
        """All three stages, ``batch_size`` queries at a time; one :class:`MoRASTrace` per query.

        ``max_new_tokens``: answer length (default ``config.max_new_tokens``: 64 ours, 512 in the authors' setup).
        """
        max_new_tokens = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        method = "fixed_r" if self.config.fixed_r is not None else "moras"
        traces = self._new_traces(images, questions, method)
        for i in self._chunks(len(traces), batch_size, progress, "MoRAS"):
            tr, ims = traces[i : i + batch_size], list(images[i : i + batch_size])
            s = self._risk_stages(tr, ims) if self.config.fixed_r is None else None
            self._stage3(tr, ims, self._strength(s, len(tr)), max_new_tokens)
        return traces

