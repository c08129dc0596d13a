"""The hook points of one decoder layer and of the final norm, TransformerLens names and meanings.

Every supported text decoder (Llama, Mistral, Qwen2, Qwen2-VL/2.5-VL text, Gemma, Gemma3) has the same
structure: ``input_layernorm`` → ``self_attn`` (``q_proj``/``k_proj``/``v_proj`` → [Gemma3: ``q_norm``/
``k_norm``] → RoPE → attention function → ``o_proj``) → [Gemma3: ``post_attention_layernorm``] → residual add →
pre-MLP norm (``post_attention_layernorm``; Gemma3: ``pre_feedforward_layernorm``) → ``mlp`` (``gate_proj``,
``up_proj``, ``act(gate) * up``, ``down_proj``) → [Gemma3: ``post_feedforward_layernorm``] → residual add.
The order keys below follow that execution order (nnsight needs it); ``attn.hook_pattern`` comes out of
``self_attn`` after ``o_proj`` ran, so it sits after ``hook_z``/``hook_result``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moras_interp.models.derived_hooks import norm_kind
from moras_interp.models.hooks import HookPoint

if TYPE_CHECKING:
    from moras_interp.models.adapters.base import Adapter


def head_counts(adapter: Adapter, layer: int = 0) -> tuple[int, int, int]:
    """(heads, kv_heads, d_head) of decoder layer ``layer``, from its projection shapes."""
    attn = adapter.module(f"{adapter.decoder}.layers.{layer}.self_attn")
    d_head = int(getattr(attn, "head_dim", 0) or attn.config.head_dim)
    return attn.q_proj.out_features // d_head, attn.k_proj.out_features // d_head, d_head


def _norm_points(prefix: str, path: str, kind: str, order: tuple[int, ...]) -> list[HookPoint]:
    return [HookPoint(f"{prefix}.hook_scale", path, "output", None, (*order, 0), "[b, pos, 1]", f"scale:{kind}"),
            HookPoint(f"{prefix}.hook_normalized", path, "output", None, (*order, 1), "[b, pos, d]",
                      f"normalized:{kind}")]


def block_points(adapter: Adapter, l: int) -> list[HookPoint]:
    """Every hook point of decoder layer ``l``, in execution order."""
    lp = f"{adapter.decoder}.layers.{l}"
    at, ml = f"{lp}.self_attn", f"{lp}.mlp"
    n_h, n_kv, _ = head_counts(adapter, l)
    a_mod, a_idx = adapter.attn_out
    m_mod, m_idx = adapter.mlp_out
    ln1, ln2 = f"{lp}.{adapter.ln1}", f"{lp}.{adapter.ln2}"
    b = f"blocks.{l}"
    qkv = "[b, pos, heads, d_head]", "[b, pos, kv_heads, d_head]"
    return [
        HookPoint(f"{b}.hook_resid_pre", lp, "input", None, (3, l, 0), "[b, pos, d]"),
        *_norm_points(f"{b}.ln1", ln1, norm_kind(adapter.module(ln1)), (3, l, 1)),
        HookPoint(f"{b}.attn.hook_q", f"{at}.q_proj", "output", None, (3, l, 2), qkv[0], f"heads:{n_h}"),
        HookPoint(f"{b}.attn.hook_k", f"{at}.k_proj", "output", None, (3, l, 3), qkv[1], f"heads:{n_kv}"),
        HookPoint(f"{b}.attn.hook_v", f"{at}.v_proj", "output", None, (3, l, 4), qkv[1], f"heads:{n_kv}"),
        HookPoint(f"{b}.attn.hook_rot_q", at, "call", None, (3, l, 5, 0), qkv[0], "rot_q"),
        HookPoint(f"{b}.attn.hook_rot_k", at, "call", None, (3, l, 5, 1), qkv[1], "rot_k"),
        HookPoint(f"{b}.attn.hook_attn_scores", at, "call", None, (3, l, 5, 2), "[b, heads, q, k]", "scores"),
        HookPoint(f"{b}.attn.hook_z", f"{at}.o_proj", "input", None, (3, l, 6), qkv[0], f"heads:{n_h}"),
        HookPoint(f"{b}.attn.hook_result", f"{at}.o_proj", "output", None, (3, l, 7), "[b, pos, heads, d]",
                  f"result:{n_h}"),
        HookPoint(f"{b}.attn.hook_pattern", at, "output", 1, (3, l, 8), "[b, heads, q, k]"),
        HookPoint(f"{b}.hook_attn_out", f"{lp}.{a_mod}", "output", a_idx, (3, l, 9), "[b, pos, d]"),
        HookPoint(f"{b}.hook_resid_mid", ln2, "input", None, (3, l, 10), "[b, pos, d]", "inplace"),
        *_norm_points(f"{b}.ln2", ln2, norm_kind(adapter.module(ln2)), (3, l, 11)),
        HookPoint(f"{b}.mlp.hook_pre", f"{ml}.gate_proj", "output", None, (3, l, 12), "[b, pos, d_mlp]"),
        HookPoint(f"{b}.mlp.hook_pre_linear", f"{ml}.up_proj", "output", None, (3, l, 13), "[b, pos, d_mlp]"),
        HookPoint(f"{b}.mlp.hook_post", f"{ml}.down_proj", "input", None, (3, l, 14), "[b, pos, d_mlp]"),
        HookPoint(f"{b}.hook_mlp_out", f"{lp}.{m_mod}", "output", m_idx, (3, l, 15), "[b, pos, d]"),
        HookPoint(f"{b}.hook_resid_post", lp, "output", None, (3, l, 16), "[b, pos, d]"),
    ]


def final_norm_points(adapter: Adapter) -> list[HookPoint]:
    """``ln_final.hook_scale`` / ``hook_normalized`` (before the weight) and ``hook_out`` (after it)."""
    path = f"{adapter.decoder}.norm"
    return [*_norm_points("ln_final", path, norm_kind(adapter.module(path)), (4,)),
            HookPoint("ln_final.hook_out", path, "output", None, (4, 2), "[b, pos, d]")]
