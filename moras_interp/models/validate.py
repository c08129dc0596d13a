"""Load-time validation: every hook name resolves to a module and yields the documented shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


def probe_image(width: int = 64, height: int = 48) -> Image.Image:
    """A small deterministic gradient image used to exercise the vision path."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 128, np.float32)], axis=-1)
    return Image.fromarray(arr.astype(np.uint8))


def validate_hooks(model: MLLM) -> dict[str, tuple[int, ...]]:
    """Runs one tiny image+text forward with shape-recording torch hooks on every hook module.

    Returns ``{name: shape}``. Raises ``RuntimeError`` naming the hook, its module and what was expected.
    """
    pts = [p for p in model._points.values() if not p.name.endswith("attn.hook_pattern")]
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for p in pts:
        mod = model.adapter.module(p.module)

        def rec(_m: Any, args: Any, kwargs_or_out: Any, p: Any = p) -> None:
            if p.io == "input":
                v = args[0] if args else kwargs_or_out.get("hidden_states")
            else:
                v = kwargs_or_out if p.index is None else kwargs_or_out[p.index]
            if isinstance(v, torch.Tensor):
                shapes.setdefault(p.name, tuple(v.shape))
            elif hasattr(v, "last_hidden_state"):
                shapes.setdefault(p.name, tuple(v.last_hidden_state.shape))
            else:
                shapes.setdefault(p.name, ())

        if p.io == "input":
            handles.append(mod.register_forward_pre_hook(lambda m, a, k, rec=rec: rec(m, a, k), with_kwargs=True))
        else:
            handles.append(mod.register_forward_hook(lambda m, a, o, rec=rec: rec(m, a, o)))
    try:
        batch = model.prepare([probe_image()], ["describe the image ."],
                              chat=bool(getattr(model.processor, "chat_template", None)))
        model.forward(batch)
    finally:
        for h in handles:
            h.remove()
    seq = batch.input_ids.shape[1]
    d = model.d_model
    vocab = model.adapter.module(model.adapter.lm_head).weight.shape[0]
    for p in pts:
        got = shapes.get(p.name)
        if got is None:
            raise RuntimeError(f"Hook {p.name!r}: module {p.module!r} never ran on a test input "
                               f"({model.arch} adapter). The adapter's path is probably wrong for this model.")
        if p.name.startswith("vision."):
            ok = len(got) >= 2
            exp = "[b*img, patches, d_v] or [patches, d_v]"
        elif p.name == "projector.hook_out":
            ok = len(got) >= 2 and got[-1] == d
            exp = f"[..., {d}]"
        elif p.name == "hook_logits":
            ok = got == (1, seq, vocab)
            exp = f"(1, {seq}, {vocab})"
        else:
            ok = got == (1, seq, d)
            exp = f"(1, {seq}, {d})"
        if not ok:
            raise RuntimeError(f"Hook {p.name!r} (module {p.module!r}, {p.io}"
                               f"{'' if p.index is None else f'[{p.index}]'}) has shape {got}, expected {exp}. "
                               f"Check moras_interp/models/adapters/{model.arch}.py.")
    return shapes
