"""``MLLM``: an HF multimodal model wrapped in nnsight, addressed by canonical hook names."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessorList

from moras_interp.models import graph as _graph
from moras_interp.models import interventions as _iv
from moras_interp.models.act_names import NamesFilter, resolve_names_filter
from moras_interp.models.adapters import Adapter, get_adapter
from moras_interp.models.backend_access import BackendAccess
from moras_interp.models.batch import Batch, ImageInput, prepare_batch
from moras_interp.models.cache import ActivationCache
from moras_interp.models.finite import FiniteLogits, StageLabels, check_outputs, pixel_hint
from moras_interp.models.hooks import HookPoint, expand_names, hook_table_markdown
from moras_interp.models.tl_run import TLRun
from moras_interp.models.weights_view import TLWeights
from moras_interp.weights_hash import param_state


@dataclass
class Generation:
    """Output of :meth:`MLLM.generate`.

    Attributes:
        sequences: LongTensor [b, prompt_len + new] (left-padded prompts followed by new tokens).
        new_tokens: LongTensor [b, new].
        texts: decoded new tokens per example (special tokens skipped).
        logits: FloatTensor [b, new, vocab], the logits each new token was chosen from (step 0 = prefill);
            only with ``generate(..., return_logits=True)``.
    """

    sequences: torch.Tensor
    new_tokens: torch.Tensor
    texts: list[str]
    logits: torch.Tensor | None = None


class MLLM(StageLabels, TLRun, BackendAccess):
    """A multimodal LLM with TransformerLens-style hook names on top of nnsight.

    Attributes:
        hf: the HF ``*ForConditionalGeneration`` module.
        processor: its processor.
        adapter: the architecture adapter (where modules live, image-token geometry).
        nn: the nnsight wrapper (``nnsight.TransformersModel``) around ``hf``; use it for free-form traces.
        backend: the default execution backend ("hooks": torch hooks; "nnsight": one intervention graph per
            call, required for ``remote``); every running method also takes ``backend=``.
        model_id: HF id, local path or a descriptive name.
        validated_shapes: hook name -> shape measured by the load-time check on a probe input (None if
            ``load_model(..., validate=False)``).
    """

    def __init__(self, hf: torch.nn.Module, processor: Any, *, model_id: str | None = None,
                 remote: bool | str = False, nn: Any = None, backend: str | None = None) -> None:
        from nnsight import TransformersModel

        self.hf = hf
        self.processor = processor
        self.adapter: Adapter = get_adapter(hf, processor)
        self.model_id = model_id or getattr(hf.config, "_name_or_path", "") or type(hf).__name__
        self.remote = remote
        self.backend = _graph.check_backend(backend or ("nnsight" if remote else "hooks"))
        """Default execution backend of forward / run_with_cache / generate: "hooks" or "nnsight"."""
        self.nn = nn if nn is not None else TransformersModel(
            hf, task="image-text-to-text", processor=processor, tokenizer=processor.tokenizer)
        self._points = {p.name: p for p in self.adapter.hook_points()}
        self.validated_shapes: dict[str, tuple[int, ...]] | None = None
        self.loaded_param_state = param_state(hf)  # run identities hash the files only while this still holds

    # ------------------------------------------------------------------ facts
    @property
    def arch(self) -> str:
        return self.adapter.name

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def cfg(self) -> Any:
        """The text model's config (hidden size, heads, layers)."""
        return getattr(self.hf.config, "text_config", self.hf.config)

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers()

    @property
    def d_model(self) -> int:
        return int(self.cfg.hidden_size)

    @property
    def attn_implementation(self) -> str:
        return str(getattr(self.cfg, "_attn_implementation", None) or "eager")

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def weights(self) -> TLWeights:
        """The weights in TransformerLens shapes, as views: ``model.weights.W_Q(l)`` etc. (:class:`TLWeights`)."""
        return TLWeights(self.adapter)

    def hook_names(self) -> list[str]:
        """Every canonical hook name of this model, in execution order (``attn.hook_result`` included, although
        ``run_with_cache(batch)`` without names leaves it out: it is computed only when asked)."""
        return list(self._points)

    def hook_point(self, name: str) -> HookPoint:
        """The :class:`HookPoint` for ``name``; ``KeyError`` with the closest names otherwise."""
        if name not in self._points:
            expand_names(name, self.hook_names())  # raises with suggestions
        return self._points[name]

    def hook_table(self) -> str:
        """Markdown table: canonical name, shape, and the module it reads on this architecture."""
        return hook_table_markdown(list(self._points.values()), f"{self.arch} ({self.model_id})",
                                   self.validated_shapes)

    def __repr__(self) -> str:
        return (f"MLLM({self.model_id!r}, arch={self.arch}, layers={self.n_layers}, d_model={self.d_model}, "
                f"attn={self.attn_implementation}, device={self.device}, dtype={self.dtype})")

    # ------------------------------------------------------------------ inputs
    def prepare(self, images: Sequence[ImageInput] | None, prompts: Sequence[str] | str, *, chat: bool = True,
                add_generation_prompt: bool = True, system: str | None = None) -> Batch:
        """Chat template + processor + left padding; a :class:`TokenLayout` per example.

        ``images`` has one entry per prompt: a PIL image or path, a list of them, or None (text-only).
        """
        return prepare_batch(self.adapter, images, prompts, chat=chat, add_generation_prompt=add_generation_prompt,
                             system=system)

    def _inputs(self, batch: Batch | dict[str, Any]) -> dict[str, Any]:
        b = batch if isinstance(batch, Batch) else Batch(dict(batch), [], [], [])
        device = None if self.device.type == "meta" else self.device  # a remote model: inputs travel from CPU
        return dict(b.to(device, self.dtype).inputs)

    # ------------------------------------------------------------------ running
    @torch.no_grad()
    def forward(self, batch: Batch | dict[str, Any], *, backend: str | None = None) -> torch.Tensor:
        """Plain forward (with the :meth:`hooks` installed); returns logits [b, pos, vocab]. NaN/Inf logits at a
        non-padding position raise :class:`~moras_interp.models.finite.NonFiniteError` naming the rows (as
        :meth:`run_with_cache`). ``backend``: "hooks" or "nnsight" (default :attr:`backend`)."""
        with self.stage("forward", default=True):
            stage = self.stage_name or "forward"
            logits = self._logits(batch, backend)
        self._check_outputs(batch, {"hook_logits": logits}, stage)
        return logits

    @torch.no_grad()
    def run_with_cache(self, batch: Batch, names: NamesFilter = None, *, names_filter: NamesFilter = None,
                       device: torch.device | str | None = None,
                       backend: str | None = None) -> tuple[torch.Tensor, ActivationCache]:
        """One forward saving the named hooks: ``names`` / ``names_filter`` (the TransformerLens name; give one) is a
        name, a glob like ``"blocks.*.hook_resid_post"``, a list of them or a callable ``name -> bool``; ``None``:
        every name except ``attn.hook_result`` ([b, pos, heads, d] per layer, only computed when named or globbed
        with its ending spelled out; a callable never selects it). ``backend``: "hooks" or "nnsight" (default
        :attr:`backend`; the nnsight backend cannot reach the attention-call hooks ``hook_rot_q`` / ``hook_rot_k``
        / ``hook_attn_scores``: name the hooks you need without them).

        Returns (logits [b, pos, vocab], ActivationCache). ``device`` moves cached tensors (e.g. "cpu").
        Values are read through the same per-hook mechanism as :meth:`hooks`, after every edit installed there,
        so under ``model.hooks([(H, f)])`` the cache holds f's result at H. NaN/Inf at a non-padding position
        raises :class:`~moras_interp.models.finite.NonFiniteError` naming the hook and the rows.
        """
        if names is not None and names_filter is not None:
            raise ValueError("run_with_cache: give names or names_filter (the same thing), not both.")
        wanted = resolve_names_filter(names if names is not None else names_filter, self.hook_names())
        for n in wanted:
            self._check_pattern(self._points[n])
        calls = [n for n in wanted if self._points[n].io == "call"]
        if calls and self._backend(backend) == "nnsight":
            raise _graph.call_points_refusal(calls)
        saved: dict[str, torch.Tensor] = {}

        def keep(name: str) -> _iv.HookFn:
            def fn(value: torch.Tensor, _ctx: _iv.HookContext) -> None:
                saved.setdefault(name, value)  # the first call, as an nnsight read
            return fn

        with self.stage("run_with_cache", default=True), _iv.hooks(self, [(n, keep(n)) for n in wanted], read=True):
            stage = self.stage_name or "run_with_cache"
            logits = self._logits(batch, backend)
        missing = [n for n in wanted if n not in saved]
        if missing:
            raise ValueError(f"hooks {missing} did not run on this batch (vision hooks never run on text-only prompts).")
        self._check_outputs(batch, {**{n: v.masked_fill(v.isneginf(), 0) if n.endswith("hook_attn_scores") else v
                                       for n, v in saved.items()}, "hook_logits": logits}, stage)
        tensors = {n: (saved[n].to(device) if device is not None else saved[n]) for n in wanted}
        return logits, ActivationCache(tensors, batch.layouts if isinstance(batch, Batch) else None, self)

    def _check_outputs(self, batch: Batch | dict[str, Any], values: dict[str, torch.Tensor], stage: str) -> None:
        is_batch = isinstance(batch, Batch)
        check_outputs(values, stage=stage, padded=lambda n: self._points[n].shape.startswith("[b, pos"),
                      attention_mask=batch.inputs.get("attention_mask") if is_batch else None,
                      examples=batch.prompts if is_batch else None, dtype=self.dtype)

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int = 32, *, do_sample: bool = False,
                 return_logits: bool = False, backend: str | None = None, **kwargs: Any) -> Generation:
        """Greedy (by default) generation with KV cache; interventions from :meth:`hooks` apply per step.

        ``return_logits=True`` also returns the per-step logits [b, new, vocab]; other keyword arguments go to
        HF ``generate`` (e.g. ``min_new_tokens``). Greedy means plain argmax: logits processors a checkpoint's
        ``generation_config`` may ship (``repetition_penalty``, ``no_repeat_ngram_size``) are switched off unless
        passed explicitly. NaN/Inf logits at any step raise :class:`~moras_interp.models.finite.NonFiniteError`
        naming the stage (see :meth:`stage`), the step and the rows. ``backend``: "hooks" (torch hooks) or
        "nnsight" (one ``model.nn.generate`` graph visiting each step with ``tracer.iter``); same tokens.
        """
        inputs = self._inputs(batch)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        kwargs.setdefault("pad_token_id", pad)
        if not do_sample:
            kwargs.setdefault("repetition_penalty", 1.0)
            kwargs.setdefault("no_repeat_ngram_size", 0)
        if return_logits:
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        with self.stage("generate", default=True):
            if self._backend(backend) == "hooks":
                hint = lambda: self._nonfinite_hint(inputs)  # noqa: E731 - computed only once an error is certain
            else:  # the processor travels with a remote graph: it must not hold the model
                text = self._nonfinite_hint(inputs)
                hint = lambda: text  # noqa: E731
            check = FiniteLogits(self.stage_name or "generate", batch.prompts if isinstance(batch, Batch) else None,
                                 self.dtype, hint)
            kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), check])
            out = self._generate(inputs, max_new_tokens, do_sample, kwargs, backend)
        seq = out if isinstance(out, torch.Tensor) else out.sequences
        new = seq[:, inputs["input_ids"].shape[1]:]
        texts = tok.batch_decode(new, skip_special_tokens=True)
        logits = torch.stack(list(out.logits), dim=1) if return_logits else None
        return Generation(seq, new, [t.strip() for t in texts], logits)

    def _nonfinite_hint(self, inputs: dict[str, Any]) -> str:
        """Where NaN/Inf may come from (only computed once an error is certain)."""
        hint = pixel_hint(inputs)
        edited = _iv.edited_hooks(self)
        if edited:
            hint += f"; edits are installed at {edited[:6]}{' …' if len(edited) > 6 else ''}"
        return hint

    @contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, _iv.HookFn]], *, steps: _iv.Steps = None,
              layouts: Any = None, read: bool = False,
              sink: Any = None) -> Iterator[_iv.InterventionHandle]:
        """Apply ``(name, fn)`` interventions inside the block, for chosen steps (0 = prefill, t = decode t).

        ``fn(value, ctx) -> new value | None``; ``ctx.step`` and ``ctx.layouts`` tell where it is. Edits at
        one hook run in installation order. ``read=True`` marks observers: their return value is ignored and
        they run after every edit at the same hook, so they see the value the model goes on with. ``sink``
        receives what the functions pass to ``ctx.record(value)`` (on every backend, remote included). The
        same installed functions run on either backend (``generate(..., backend="hooks" | "nnsight")``).
        """
        with _iv.hooks(self, fwd_hooks, steps=steps, layouts=layouts, read=read, sink=sink) as h:
            yield h
