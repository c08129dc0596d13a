"""Load-time validation: every hook name resolves to a module and yields the documented shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from moras_interp.models.hooks import on_request

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


def probe_image(width: int = 64, height: int = 48) -> Image.Image:
    """A small deterministic gradient image used to exercise the vision path."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 128, np.float32)], axis=-1)
    return Image.fromarray(arr.astype(np.uint8))


def expected_shape(model: MLLM, name: str, seq: int) -> tuple[int, ...] | None:
    """The shape hook ``name`` must have on a one-example probe of ``seq`` tokens (None: vision/projector)."""
    from moras_interp.models.adapters.tl_points import head_counts

    p = model.hook_point(name)
    d = model.d_model
    if name.startswith("vision.") or name == "projector.hook_out":
        return None
    if name == "hook_logits":
        return (1, seq, model.adapter.module(model.adapter.lm_head).weight.shape[0])
    if ".mlp." in name:
        mod = model.adapter.module(p.module)
        return (1, seq, int(mod.in_features if p.io == "input" else mod.out_features))
    heads, kv_heads, d_head = head_counts(model.adapter, int(name.split(".")[1]) if name.startswith("blocks.") else 0)
    last = name.rsplit(".", 1)[-1]
    return {"hook_q": (1, seq, heads, d_head), "hook_rot_q": (1, seq, heads, d_head), "hook_z": (1, seq, heads, d_head),
            "hook_k": (1, seq, kv_heads, d_head), "hook_v": (1, seq, kv_heads, d_head),
            "hook_rot_k": (1, seq, kv_heads, d_head), "hook_result": (1, seq, heads, d),
            "hook_attn_scores": (1, heads, seq, seq), "hook_pattern": (1, heads, seq, seq),
            "hook_scale": (1, seq, 1)}.get(last, (1, seq, d))


def validate_hooks(model: MLLM) -> dict[str, tuple[int, ...]]:
    """Runs one tiny image+text forward reading every hook's shape through ``model.hooks(..., read=True)``.

    Eager-only names (``attn.hook_pattern``, ``attn.hook_attn_scores``) and on-request ones
    (``attn.hook_result``) are not probed. Returns ``{name: shape}``. Raises ``RuntimeError`` naming the hook,
    its module and what was expected.
    """
    from moras_interp.models.interventions import hooks

    names = [n for n in model.hook_names() if not n.endswith(("attn.hook_pattern", "attn.hook_attn_scores"))
             and not on_request(n)]
    shapes: dict[str, tuple[int, ...]] = {}

    def rec(name: str) -> Any:
        def fn(v: Any, _ctx: Any) -> None:
            if isinstance(v, torch.Tensor):
                shapes.setdefault(name, tuple(v.shape))
            elif hasattr(v, "last_hidden_state"):
                shapes.setdefault(name, tuple(v.last_hidden_state.shape))
            else:
                shapes.setdefault(name, ())
        return fn

    batch = model.prepare([probe_image()], ["describe the image ."],
                          chat=bool(getattr(model.processor, "chat_template", None)))
    with hooks(model, [(n, rec(n)) for n in names], read=True):
        model.forward(batch)
    seq = batch.input_ids.shape[1]
    d = model.d_model
    for n in names:
        p = model.hook_point(n)
        got = shapes.get(n)
        if got is None:
            raise RuntimeError(f"Hook {n!r}: module {p.module!r} never ran on a test input "
                               f"({model.arch} adapter). The adapter's path is probably wrong for this model.")
        exp = expected_shape(model, n, seq)
        if n.startswith("vision."):
            ok, want = len(got) >= 2, "[b*img, patches, d_v] or [patches, d_v]"
        elif exp is None:
            ok, want = len(got) >= 2 and got[-1] == d, f"[..., {d}]"
        else:
            ok, want = got == exp, str(exp)
        if not ok:
            raise RuntimeError(f"Hook {n!r} (module {p.module!r}, {p.io}"
                               f"{'' if p.index is None else f'[{p.index}]'}) has shape {got}, expected {want}. "
                               f"Check moras_interp/models/adapters/{model.arch}.py.")
    return shapes
