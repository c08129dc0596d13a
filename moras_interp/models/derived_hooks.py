"""Derived hook points: values computed from a module's input or output, each with an inverse for edits.

A plain :class:`~moras_interp.models.hooks.HookPoint` is a module's input or output. A derived one
(``HookPoint.view``) is computed from it; an edit writes back through the inverse, so the rest of the
model runs on exactly what the edit returned:

=================  ==================================  ====================================  ===============================
view               where                               value                                 an edit writes
=================  ==================================  ====================================  ===============================
``heads:N``        q/k/v_proj output, o_proj input     ``v.unflatten(-1, (N, d_head))``      ``value.flatten(-2)``
``scale:KIND``     norm output (from the norm input x) ``sqrt(mean(x²) + eps)`` [.., 1]      ``out = finish(x / scale)``
``normalized:K``   norm output (from x)                ``x / scale`` (before the weight)     ``out = finish(value)``
``result:N``       o_proj output (from its input z)    ``z_h @ W_O[h]`` [.., N, d]           ``out = Σ_h value + b_O``
``inplace``        ln2 input (= the residual)          the input itself                      copied in place
=================  ==================================  ====================================  ===============================

``KIND`` is the norm convention, found by running the module once (:func:`norm_kind`): ``rms``
(``w · n``, Llama/Qwen), ``gemma`` (``(1 + w) · n`` in float32), ``layer`` (LayerNorm: ``n = (x - mean) / scale``,
``w · n + b``). TransformerLens' ``hook_scale`` is ``sqrt(mean(x²) + eps)`` and ``hook_normalized = x / scale``;
both are float32 (float64 for float64 inputs) like TransformerLens' upcast of half-precision norms, and the
normalized value is HF's own ``x · rsqrt(mean(x²) + eps)`` in float32, so ``w · normalized`` (cast as the module
casts) is the module's output bit for bit. ``inplace`` serves ``hook_resid_mid``: the decoder layer keeps
the tensor it passes to the pre-MLP norm as its residual, so an in-place copy edits both (the residual stream
the layer continues with, as in TransformerLens). The attention-call values (``rot_q``, ``rot_k``, ``scores``)
live in :mod:`moras_interp.models.attn_call`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from moras_interp.models.hooks import HookPoint


class Site:
    """One call of one module as a dispatcher sees it: ``args``/``kwargs`` (input) and ``out`` (None before
    the call). ``memo`` holds derived values of this call (norm scale, per-head results) until edited."""

    def __init__(self, module: torch.nn.Module, args: tuple, kwargs: dict, out: Any = None) -> None:
        self.module, self.args, self.kwargs, self.out = module, args, kwargs, out
        self.memo: dict[str, torch.Tensor] = {}

    def _key(self) -> str | None:
        if self.args:
            return None
        return "hidden_states" if "hidden_states" in self.kwargs else next(iter(self.kwargs))

    def input(self) -> torch.Tensor:
        key = self._key()
        return self.args[0] if key is None else self.kwargs[key]

    def set_input(self, v: torch.Tensor) -> None:
        key = self._key()
        if key is None:
            self.args = (v, *self.args[1:])
        else:
            self.kwargs = {**self.kwargs, key: v}

    def output(self, p: HookPoint) -> torch.Tensor:
        if p.index is None:
            return self.out
        if not isinstance(self.out, tuple):
            raise TypeError(f"{p.name}: expected a tuple output from {p.module}, got {type(self.out)}")
        return self.out[p.index]

    def set_output(self, p: HookPoint, v: torch.Tensor) -> None:
        if p.index is None:
            self.out = v
        else:
            items = list(self.out)
            items[p.index] = v
            self.out = tuple(items)


def _raw(p: HookPoint, site: Site) -> torch.Tensor:
    return site.input() if p.io == "input" else site.output(p)


def _set_raw(p: HookPoint, site: Site, v: torch.Tensor) -> None:
    if p.io == "input":
        site.set_input(v)
    else:
        site.set_output(p, v)


def _split(view: str) -> tuple[str, str]:
    kind, _, arg = view.partition(":")
    return kind, arg


# ------------------------------------------------------------------ norms
def _eps(m: torch.nn.Module) -> float:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        if isinstance(getattr(m, attr, None), float | int):
            return float(getattr(m, attr))
    raise TypeError(f"{type(m).__name__}: no epsilon attribute (variance_epsilon / eps) for the norm hooks.")


def norm_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of ``hook_scale`` / ``hook_normalized``: float32 (float64 for float64 inputs), as TransformerLens."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def centred(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``x`` in the norm dtype, minus its mean for LayerNorm."""
    xf = x.to(norm_dtype(x))
    return xf - xf.mean(-1, keepdim=True) if kind == "layer" else xf


def norm_parts(m: torch.nn.Module, x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [.., 1], normalized [.., d]) of the norm module ``m`` at input ``x``, in :func:`norm_dtype`."""
    xf = centred(x, kind)
    var = xf.pow(2).mean(-1, keepdim=True) + _eps(m)
    return var.sqrt(), xf * torch.rsqrt(var)


def norm_finish(m: torch.nn.Module, n: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """The norm's output from its normalized value ``n`` (the weight, and LayerNorm's bias, applied)."""
    if kind == "gemma":
        return (n.float() * (1.0 + m.weight.float())).to(dtype)
    out = m.weight * n.to(dtype)
    if kind == "layer" and getattr(m, "bias", None) is not None:
        out = out + m.bias
    return out


_KINDS: dict[type, str] = {}


@torch.no_grad()
def norm_kind(m: torch.nn.Module) -> str:
    """``"rms"``, ``"gemma"`` or ``"layer"``: the convention that reproduces ``m(x)`` on a random input.

    Checked once per class (by running the module on 4 random rows; for a module on the meta device, a CPU copy
    with random weights); a norm no convention reproduces is a
    ``TypeError`` naming the class, so ``ln*.hook_normalized`` never silently means something else.
    """
    if type(m) in _KINDS:
        return _KINDS[type(m)]
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor) or w.ndim != 1:
        raise TypeError(f"{type(m).__name__}: not a norm with a [d] weight; the ln hooks need one.")
    if w.is_meta:  # load_model(..., remote=True): probe a CPU copy of the class with random weights
        g = torch.Generator().manual_seed(1)
        m = copy.deepcopy(m).to_empty(device="cpu")
        for p in m.parameters():
            p.data.copy_(torch.randn(p.shape, generator=g).to(p.dtype))
        w = m.weight
    x = torch.randn(4, w.shape[0], generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    want = m(x).float()
    tol = 1e-4 if w.dtype == torch.float32 else 3e-2
    for kind in ("rms", "gemma", "layer"):
        got = norm_finish(m, norm_parts(m, x, kind)[1], kind, x.dtype).float()
        if torch.allclose(got, want, atol=tol, rtol=tol):
            _KINDS[type(m)] = kind
            return kind
    raise TypeError(f"{type(m).__name__}: neither RMSNorm (w·n), Gemma's (1+w)·n nor LayerNorm reproduces its output; "
                    "add its convention to moras_interp/models/derived_hooks.py.")


# ------------------------------------------------------------------ get / put
def get_value(p: HookPoint, site: Site) -> torch.Tensor:
    """The value of hook ``p`` at this call (derived values memoised until an edit replaces them)."""
    if p.view is None or p.view == "inplace":
        return _raw(p, site)
    kind, arg = _split(p.view)
    if kind == "heads":
        return _raw(p, site).unflatten(-1, (int(arg), -1))
    if kind in ("scale", "normalized"):
        if kind not in site.memo:  # an edit sets both (scale) or the one it replaced (normalized)
            scale, normalized = norm_parts(site.module, site.input(), arg)
            site.memo.setdefault("scale", scale)
            site.memo.setdefault("normalized", normalized)
        return site.memo[kind]
    if kind == "result":
        if "result" not in site.memo:
            w_o = site.module.weight.t().unflatten(0, (int(arg), -1))  # [H, d_head, d]
            z = site.input().unflatten(-1, (int(arg), -1))  # [.., H, d_head]
            site.memo["result"] = torch.einsum("...he,hed->...hd", z, w_o)
        return site.memo["result"]
    raise ValueError(f"{p.name}: unknown hook view {p.view!r}.")


def put_value(p: HookPoint, site: Site, v: torch.Tensor) -> None:
    """Write an edited value of hook ``p`` back into this call (through the view's inverse)."""
    if p.view is None:
        _set_raw(p, site, v)
        return
    old = get_value(p, site)
    if not isinstance(v, torch.Tensor) or v.shape != old.shape:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{p.name}: an edit must return a tensor of the hook's shape {tuple(old.shape)}, got {got}.")
    kind, arg = _split(p.view)
    if kind == "inplace":
        old.copy_(v)
    elif kind == "heads":
        _set_raw(p, site, v.flatten(-2))
    elif kind in ("scale", "normalized"):
        x = site.input()
        if kind == "scale":
            xc = centred(x, arg)
            site.memo.update(scale=v, normalized=xc / v.to(xc.dtype))
        else:
            site.memo["normalized"] = v
        site.set_output(p, norm_finish(site.module, site.memo["normalized"], arg, x.dtype))
    elif kind == "result":
        site.memo["result"] = v
        bias = getattr(site.module, "bias", None)
        out = v.sum(-2)
        site.set_output(p, out + bias if bias is not None else out.to(old.dtype))
    else:
        raise ValueError(f"{p.name}: unknown hook view {p.view!r}.")
