"""TransformerLens shorthand for hook names, and ``names_filter`` resolution.

``get_act_name`` follows the rules of ``transformer_lens.utils.get_act_name``: ``("resid_pre", 0)`` ->
``blocks.0.hook_resid_pre``, ``("q", 3)`` -> ``blocks.3.attn.hook_q``, ``("pattern", 2, "attn")`` ->
``blocks.2.attn.hook_pattern``, ``("scale", 4, "ln1")`` -> ``blocks.4.ln1.hook_scale``, ``"scale"`` ->
``ln_final.hook_scale``, ``"k6"`` -> ``blocks.6.attn.hook_k``, ``"embed"`` -> ``hook_embed``. A full name (one
with a dot, or starting with ``hook_``) is returned unchanged.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence

from moras_interp.models.hooks import ON_REQUEST, expand_names, on_request

_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
            "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_SUBLAYER_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ATTN = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
_MLP = {"pre", "post", "mid", "pre_linear"}
_NORM = {"scale", "normalized"}

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
"""A hook name, a glob (``"blocks.*.attn.hook_z"``), a list of them, a callable ``name -> bool`` or None (all)."""


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """The full hook name for TransformerLens shorthand (see the module docstring for examples).

    ``layer`` must already be non-negative here (``ActivationCache`` resolves ``-1`` against ``n_layers``).
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    packed = re.fullmatch(r"([a-z_]+?)(\d+)([a-z_]*\d*)", name)
    if packed is not None and layer is None:  # "k6", "scale4ln1"
        name, layer, layer_type = packed.group(1), packed.group(2), packed.group(3) or None
    name = _ALIASES.get(name, name)
    if name in _ATTN:
        layer_type = "attn"
    elif name in _MLP:
        layer_type = "mlp"
    elif layer_type is not None:
        layer_type = _SUBLAYER_ALIASES.get(layer_type, layer_type)
    full = f"hook_{name}"
    if layer_type:
        full = f"{layer_type}.{full}"
    if layer is not None:
        full = f"blocks.{int(layer)}.{full}"
    elif name in _NORM:
        full = f"ln_final.{full}"
    return full


def resolve_names_filter(names_filter: NamesFilter, available: list[str]) -> list[str]:
    """The hook names ``names_filter`` selects among ``available`` (kept in ``available``'s execution order).

    A string or a list of strings goes through :func:`~moras_interp.models.hooks.expand_names` (exact names and
    globs; an unknown name raises ``KeyError`` with the closest names); a callable is called once per
    available name and must return a bool. A callable never selects the hooks computed only on request
    (``attn.hook_result``: name or glob them; a warning says when it matched them); one that selects nothing is
    an error naming the fix.
    """
    if names_filter is None or isinstance(names_filter, str):
        return expand_names(names_filter, available)
    if callable(names_filter):
        picked, skipped = [], []
        for n in available:
            keep = names_filter(n)
            if not isinstance(keep, bool):
                raise TypeError(f"names_filter({n!r}) returned {type(keep).__name__}; it must return True or False.")
            if keep:
                (skipped if on_request(n) else picked).append(n)
        if not picked:
            hint = (f" It matched only hooks computed on request ({', '.join(ON_REQUEST)}); name them or use a glob such"
                    " as 'blocks.*.attn.hook_result'." if skipped else "")
            raise KeyError(f"names_filter selected no hook name; list the names with model.hook_names().{hint}")
        if skipped:
            warnings.warn(f"names_filter matched {len(skipped)} hooks computed only on request ({', '.join(ON_REQUEST)}),"
                          " left out; name them (e.g. 'blocks.*.attn.hook_result') to cache them, or let "
                          "cache.stack_head_results() compute the head results from hook_z.", stacklevel=3)
        return picked
    names = list(names_filter)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"names_filter: expected hook names or globs (str), got {names!r}.")
    return expand_names(names, available)
