"""Hook points inside the attention-function call: ``attn.hook_rot_q``, ``attn.hook_rot_k``, ``attn.hook_attn_scores``.

Every supported attention module (transformers 5) computes q/k/v, applies q/k norms (Gemma3) and RoPE
(multimodal RoPE on Qwen2-VL: its cos/sin already merge the t/h/w sections), updates the KV cache, then calls
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)(self, query,
key, value, attention_mask, scaling=..., ...)`` with query [b, heads, q, d_head] and key/value
[b, kv_heads, k, d_head]. While a hook is installed at one of these names, a forward pre-hook on that
attention module registers a wrapper for the model's attention implementation in transformers'
``AttentionInterface`` (``ALL_ATTENTION_FUNCTIONS[impl] = wrapper``) for the duration of that module's forward
only (an ``always_call`` forward hook restores the previous entry, also after an exception); other modules and
other forwards are untouched. The wrapper:

* ``hook_rot_q`` [b, pos, heads, d_head]: the query the attention uses (after Gemma3's ``q_norm`` and RoPE);
  an edit replaces it.
* ``hook_rot_k`` [b, pos, kv_heads, d_head]: the keys of this forward's new positions (the last ``pos`` rows
  of what the cache returns; at prefill every position). An edit is written **in place** into those rows, so
  with transformers' dynamic caches (full and sliding-window layers) the edited keys also enter the KV cache
  and later decode steps attend to them, as in TransformerLens.
* ``hook_attn_scores`` [b, heads, q, k] (eager only, as ``hook_pattern``): ``q·kᵀ · scaling`` (soft-capped where
  the model soft-caps), plus the model's mask, with masked entries set to ``-inf`` as in TransformerLens. Reads
  leave the model's own attention function in charge (``softmax(scores)`` equals ``hook_pattern`` on every
  non-padding row); an edit makes the wrapper finish eagerly from the edited scores (float32 softmax, rows that
  are fully masked give zeros) and return those probabilities as the pattern.

These values exist only inside the call, so an nnsight trace cannot reach them by name
(:func:`trace_refusal`).
"""

from __future__ import annotations

import math
import sys
from functools import partial
from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from moras_interp.models.dispatch import Dispatcher, Entry, HookContext
from moras_interp.models.hooks import HookPoint

CALL_VIEWS = ("rot_q", "rot_k", "scores")


def trace_refusal(name: str) -> ValueError:
    """The error for reading/writing an attention-call hook inside an nnsight trace."""
    return ValueError(
        f"{name} lives inside the attention-function call, which an nnsight trace cannot address by name. Read it "
        f"with model.run_with_cache(batch, names=[{name!r}]) or edit it with model.hooks([({name!r}, fn)]); inside a "
        "trace use blocks.{l}.attn.hook_q / hook_k (before RoPE) or the module's .source attention call.")


class CallSite:
    """The arguments of one attention-function call, as hooks see and edit them."""

    def __init__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 mask: torch.Tensor | None, kwargs: dict[str, Any]) -> None:
        self.module, self.query, self.key, self.value, self.mask = module, query, key, value, mask
        self.scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        self.softcap = kwargs.get("softcap")
        self.scores: torch.Tensor | None = None
        self.scores_edited = False

    def compute_scores(self) -> torch.Tensor:
        """[b, heads, q, k] pre-softmax scores as eager attention computes them; masked entries -inf."""
        k = self.key.repeat_interleave(self.query.shape[1] // self.key.shape[1], dim=1)
        s = torch.matmul(self.query, k.transpose(2, 3)) * self.scaling
        if self.softcap is not None:
            s = torch.tanh(s / self.softcap) * self.softcap
        if self.mask is not None:
            m = self.mask[..., : k.shape[2]]
            if m.dtype == torch.bool:
                s = s.masked_fill(~m, -math.inf)
            else:
                s = (s + m).masked_fill(m <= torch.finfo(m.dtype).min / 2, -math.inf)
        return s

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(output [b, q, heads, d_head], probabilities [b, heads, q, k]) from the (edited) scores, eagerly."""
        assert self.scores is not None
        p = torch.softmax(self.scores.float(), dim=-1).nan_to_num(0.0).to(self.query.dtype)
        v = self.value.repeat_interleave(self.query.shape[1] // self.value.shape[1], dim=1)
        return torch.matmul(p, v).transpose(1, 2).contiguous(), p


def call_get(p: HookPoint, site: CallSite) -> torch.Tensor:
    if p.view == "rot_q":
        return site.query.transpose(1, 2)
    if p.view == "rot_k":
        return site.key[:, :, -site.query.shape[2]:].transpose(1, 2)
    if p.view == "scores":
        if site.scores is None:
            site.scores = site.compute_scores()
        return site.scores
    raise ValueError(f"{p.name}: unknown attention-call view {p.view!r}.")


def call_put(p: HookPoint, site: CallSite, v: torch.Tensor) -> None:
    old = call_get(p, site)
    if not isinstance(v, torch.Tensor) or v.shape != old.shape:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{p.name}: an edit must return a tensor of the hook's shape {tuple(old.shape)}, got {got}.")
    if p.view == "rot_q":
        site.query, site.scores = v.transpose(1, 2).to(site.query.dtype), None
    elif p.view == "rot_k":
        site.key[:, :, -site.query.shape[2]:].copy_(v.transpose(1, 2))
        site.scores = None
    else:
        site.scores, site.scores_edited = v, True


_MISSING = object()


class CallDispatcher(Dispatcher):
    """Edits and reads at the attention-function call of one attention module (see the module docstring)."""

    def _register(self) -> list[Any]:
        self._saved: tuple[str, Any] | None = None
        return [self.module.register_forward_pre_hook(self._enter, with_kwargs=True),
                self.module.register_forward_hook(self._exit, always_call=True)]

    def _enter(self, m: torch.nn.Module, _args: tuple, _kwargs: dict) -> None:
        live = self._live()
        if not live:
            return
        impl = getattr(m.config, "_attn_implementation", None) or "eager"
        if impl != "eager" and any(e.point.view == "scores" for e, _ in live):
            raise ValueError(f"{live[0][0].point.name.rsplit('.', 1)[0]}.hook_attn_scores needs eager attention but "
                             f"this model runs {impl!r}; load it with load_model(..., attn_implementation='eager').")
        default = getattr(sys.modules[type(m).__module__], "eager_attention_forward", None)
        original = ALL_ATTENTION_FUNCTIONS.get_interface(impl, default)
        if original is None:
            raise TypeError(f"{type(m).__name__}: no attention function for {impl!r}; the attention-call hooks need "
                            "the transformers 5 AttentionInterface dispatch.")
        local = ALL_ATTENTION_FUNCTIONS._local_mapping
        self._saved = (impl, local.get(impl, _MISSING))
        local[impl] = partial(self._call, live, original)

    def _exit(self, _m: torch.nn.Module, _args: tuple, _out: Any) -> None:
        if self._saved is None:
            return
        impl, prev = self._saved
        self._saved = None
        local = ALL_ATTENTION_FUNCTIONS._local_mapping
        if prev is _MISSING:
            local.pop(impl, None)
        else:
            local[impl] = prev

    def _call(self, live: list[tuple[Entry, HookContext]], original: Any, module: torch.nn.Module,
              query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
              *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if module is not self.module:  # another module's call while ours is open: not ours to hook
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        site = CallSite(module, query, key, value, attention_mask, kwargs)
        self._run(live, site, call_get, call_put)
        if site.scores_edited:
            return site.finish()
        return original(module, site.query, site.key, value, attention_mask, *args, **kwargs)
