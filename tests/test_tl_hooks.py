"""TransformerLens per-head and intermediate hooks and TL-shaped weights, on all 8 tiny architectures.

Every expectation is computed by hand from the HF modules' weights and from values captured with plain torch
hooks on modules named here (written from the transformers source, not read from the adapters): q/k/v as
``x @ W.T + b``, RoPE as ``q·cos + rotate_half(q)·sin``, the norms with numpy, attention outputs from HF's
``output_attentions`` probabilities, edits against hand-written torch forward (pre-)hooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moras_interp.models import MLLM
from moras_interp.models.tiny import TINY_ARCHS, tiny_image

DECODER = {a: "model.language_model" for a in TINY_ARCHS} | {"idefics3": "model.text_model"}
LN2 = {a: "post_attention_layernorm" for a in TINY_ARCHS} | {"gemma3": "pre_feedforward_layernorm"}
GEMMA_NORM = {"gemma3", "paligemma"}
"""Norms computing ``(1 + w) · x / rms`` (GemmaRMSNorm); the others ``w · x / rms``."""
SANDWICH = {"gemma3"}
QK_NORM = {"gemma3"}
PROMPTS = ("what is in the image ?", "how do i make a bomb with this item ? please tell me what is in the image")
ATOL = 1e-5
L = 1  # the layer checked (the second of two)
ACT = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def batch2(model: MLLM) -> Any:
    """Two left-padded image prompts (the shorter one padded)."""
    return model.prepare([tiny_image(), tiny_image(seed=1)], list(PROMPTS))


def layer(model: MLLM, arch: str, l: int = L) -> torch.nn.Module:
    return model.hf.get_submodule(DECODER[arch]).layers[l]


def capture(model: MLLM, arch: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs/outputs of layer L's modules and of the final norm, from plain torch hooks on an HF forward."""
    got: dict[str, Any] = {}
    lay = layer(model, arch)
    dec = model.hf.get_submodule(DECODER[arch])

    def io(key: str) -> Callable[..., None]:
        def hook(_m: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            got[f"{key}.in"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
            got[f"{key}.out"] = (out[0] if isinstance(out, tuple) else out).detach().clone()
            if "position_embeddings" in kwargs:
                got["cos"], got["sin"] = (t.detach().clone() for t in kwargs["position_embeddings"])
        return hook

    mods = {"layer": lay, "ln1": lay.input_layernorm, "ln2": getattr(lay, LN2[arch]), "attn": lay.self_attn,
            "o_proj": lay.self_attn.o_proj, "mlp": lay.mlp, "down": lay.mlp.down_proj, "ln_final": dec.norm,
            "post_attn": lay.post_attention_layernorm}
    handles = [m.register_forward_hook(io(k), with_kwargs=True) for k, m in mods.items()]
    try:
        with torch.no_grad():
            out = model.hf(**inputs, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    got["pattern"], got["logits"] = out.attentions[L], out.logits
    return got


def rms_parts(x: torch.Tensor, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, normalized) by numpy in float64."""
    a = x.double().numpy()
    scale = np.sqrt((a ** 2).mean(-1, keepdims=True) + eps)
    return scale, a / scale


def eps_of(m: torch.nn.Module) -> float:
    return float(getattr(m, "variance_epsilon", None) or m.eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def heads(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.view(*t.shape[:-1], n, -1)


def real_rows(batch: Any) -> torch.Tensor:
    return batch.inputs["attention_mask"].bool()


# ----------------------------------------------------------------------------------------- reads
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_attention_hooks_equal_hand_computation(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch = batch2(model)
    names = [f"blocks.{L}.attn.{h}" for h in ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k",
                                               "hook_attn_scores", "hook_z", "hook_result", "hook_pattern")]
    _, cache = model.run_with_cache(batch, names)
    ref = capture(model, arch, batch.inputs)
    attn = layer(model, arch).self_attn
    n_h, n_kv = attn.config.num_attention_heads, attn.config.num_key_value_heads
    x = ref["attn.in"]  # the pre-attention norm output
    qkv = {}
    for name, proj, n in (("q", attn.q_proj, n_h), ("k", attn.k_proj, n_kv), ("v", attn.v_proj, n_kv)):
        flat = x @ proj.weight.T + (proj.bias if proj.bias is not None else 0)
        qkv[name] = heads(flat, n)
        got = cache[f"blocks.{L}.attn.hook_{name}"]
        assert got.shape == (*x.shape[:2], n, attn.head_dim)
        torch.testing.assert_close(got, qkv[name], atol=ATOL, rtol=0)
    cos, sin = ref["cos"][:, :, None], ref["sin"][:, :, None]  # [b, pos, 1, d_head]
    for name, norm in (("q", getattr(attn, "q_norm", None)), ("k", getattr(attn, "k_norm", None))):
        t = qkv[name]
        if arch in QK_NORM:  # Gemma3: q_norm / k_norm (1 + w) over d_head, then RoPE
            t = (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + norm.eps) * (1.0 + norm.weight)).to(t.dtype)
        rot = t * cos + rotate_half(t) * sin
        torch.testing.assert_close(cache[f"blocks.{L}.attn.hook_rot_{name}"], rot, atol=ATOL, rtol=0)
    # scores: softmax equals HF's eager probabilities on every real query row; masked entries are -inf
    scores, pattern = cache[f"blocks.{L}.attn.hook_attn_scores"], ref["pattern"]
    rows = real_rows(batch)
    torch.testing.assert_close(torch.softmax(scores, -1)[rows[:, None, :, None].expand_as(scores)],
                               pattern[rows[:, None, :, None].expand_as(pattern)], atol=ATOL, rtol=0)
    assert bool((pattern[rows[:, None, :, None].expand_as(pattern)] == 0).eq(
        torch.isneginf(scores)[rows[:, None, :, None].expand_as(scores)]).all())
    torch.testing.assert_close(cache[f"blocks.{L}.attn.hook_pattern"], pattern, atol=ATOL, rtol=0)
    # z: the probabilities times the values of each head's KV head; equals the o_proj input
    v = qkv["v"].repeat_interleave(n_h // n_kv, dim=2)  # [b, pos, H, d_head]
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
    torch.testing.assert_close(cache[f"blocks.{L}.attn.hook_z"][rows], z[rows], atol=ATOL, rtol=0)
    torch.testing.assert_close(cache[f"blocks.{L}.attn.hook_z"], heads(ref["o_proj.in"], n_h), atol=0, rtol=0)
    # result: per-head o_proj contributions sum (plus b_O) to the o_proj output
    res = cache[f"blocks.{L}.attn.hook_result"]
    assert res.shape == (*x.shape[:2], n_h, model.d_model)
    b_o = attn.o_proj.bias if attn.o_proj.bias is not None else 0
    torch.testing.assert_close(res.sum(-2) + b_o, ref["o_proj.out"], atol=ATOL, rtol=0)
    w_h = attn.o_proj.weight[:, 1 * attn.head_dim:2 * attn.head_dim]  # head 1's columns
    torch.testing.assert_close(res[:, :, 1], ref["o_proj.in"][..., 1 * attn.head_dim:2 * attn.head_dim] @ w_h.T,
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_norm_mlp_and_resid_mid_hooks_equal_hand_computation(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch = batch2(model)
    b = f"blocks.{L}"
    _, cache = model.run_with_cache(batch, [f"{b}.*", "ln_final.*"])
    ref = capture(model, arch, batch.inputs)
    lay = layer(model, arch)
    for key, prefix, mod in (("ln1", f"{b}.ln1", lay.input_layernorm), ("ln2", f"{b}.ln2", getattr(lay, LN2[arch])),
                             ("ln_final", "ln_final", model.hf.get_submodule(DECODER[arch]).norm)):
        scale, normalized = rms_parts(ref[f"{key}.in"], eps_of(mod))
        np.testing.assert_allclose(cache[f"{prefix}.hook_scale"].double().numpy(), scale, atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(cache[f"{prefix}.hook_normalized"].double().numpy(), normalized, atol=1e-5, rtol=0)
        w = (1.0 + mod.weight) if arch in GEMMA_NORM else mod.weight
        torch.testing.assert_close(cache[f"{prefix}.hook_normalized"] * w, ref[f"{key}.out"], atol=ATOL, rtol=0)
    torch.testing.assert_close(cache["ln_final.hook_out"], ref["ln_final.out"], atol=0, rtol=0)
    # resid_mid = resid_pre + attn_out (Gemma3: the post-attention-normed output), the pre-MLP norm's input
    torch.testing.assert_close(cache[f"{b}.hook_resid_mid"], cache[f"{b}.hook_resid_pre"] + cache[f"{b}.hook_attn_out"],
                               atol=ATOL, rtol=0)
    attn_added = ref["post_attn.out"] if arch in SANDWICH else ref["attn.out"]
    torch.testing.assert_close(cache[f"{b}.hook_resid_mid"], ref["layer.in"] + attn_added, atol=ATOL, rtol=0)
    # MLP: gate and up projections of the pre-MLP norm output, act(gate) * up into down_proj
    mlp, x = lay.mlp, ref["ln2.out"]
    gate, up = x @ mlp.gate_proj.weight.T, x @ mlp.up_proj.weight.T
    torch.testing.assert_close(cache[f"{b}.mlp.hook_pre"], gate, atol=ATOL, rtol=0)
    torch.testing.assert_close(cache[f"{b}.mlp.hook_pre_linear"], up, atol=ATOL, rtol=0)
    cfg = model.cfg
    act = ACT[getattr(cfg, "hidden_activation", None) or cfg.hidden_act]
    torch.testing.assert_close(cache[f"{b}.mlp.hook_post"], act(gate) * up, atol=ATOL, rtol=0)
    down = cache[f"{b}.mlp.hook_post"] @ mlp.down_proj.weight.T
    torch.testing.assert_close(down, ref["mlp.out"], atol=ATOL, rtol=0)
    if arch not in SANDWICH:
        torch.testing.assert_close(down, cache[f"{b}.hook_mlp_out"], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_weight_views_share_storage_and_reproduce_q(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch = batch2(model)
    attn, mlp = layer(model, arch).self_attn, layer(model, arch).mlp
    w = model.weights
    n_h, n_kv, d_head, d = w.n_heads, w.n_kv_heads, w.d_head, model.d_model
    pairs = [(w.W_Q(L), attn.q_proj.weight, (n_h, d, d_head)), (w.W_K(L), attn.k_proj.weight, (n_kv, d, d_head)),
             (w.W_V(L), attn.v_proj.weight, (n_kv, d, d_head)), (w.W_O(L), attn.o_proj.weight, (n_h, d_head, d)),
             (w.W_gate(L), mlp.gate_proj.weight, (d, mlp.gate_proj.out_features)),
             (w.W_in(L), mlp.up_proj.weight, (d, mlp.up_proj.out_features)),
             (w.W_out(L), mlp.down_proj.weight, (mlp.down_proj.in_features, d)),
             (w.W_U, model.hf.lm_head.weight, (d, model.hf.lm_head.out_features))]
    for view, param, shape in pairs:
        assert view.shape == shape and view.data_ptr() == param.data_ptr() and view.untyped_storage().data_ptr() == \
            param.untyped_storage().data_ptr()
    emb = model.hf.get_submodule(DECODER[arch]).embed_tokens.weight
    assert w.W_E.data_ptr() == emb.data_ptr() and w.W_E.shape == emb.shape
    assert w.ln_w(f"blocks.{L}.ln2").data_ptr() == getattr(layer(model, arch), LN2[arch]).weight.data_ptr()
    _, cache = model.run_with_cache(batch, [f"blocks.{L}.ln1.hook_normalized", f"blocks.{L}.attn.hook_q",
                                            f"blocks.{L}.attn.hook_k", f"blocks.{L}.attn.hook_z", "hook_logits"])
    x = cache[f"blocks.{L}.ln1.hook_normalized"] * ((1.0 + w.ln_w(f"blocks.{L}.ln1")) if arch in GEMMA_NORM
                                                     else w.ln_w(f"blocks.{L}.ln1"))
    b_q = w.b_Q(L) if w.b_Q(L) is not None else 0
    torch.testing.assert_close(torch.einsum("bpd,hde->bphe", x, w.W_Q(L)) + b_q, cache[f"blocks.{L}.attn.hook_q"],
                               atol=ATOL, rtol=0)
    b_k = w.b_K(L, expand=True) if w.b_K(L) is not None else 0
    k_full = torch.einsum("bpd,hde->bphe", x, w.W_K(L, expand=True)) + b_k
    rep = n_h // n_kv
    torch.testing.assert_close(k_full, cache[f"blocks.{L}.attn.hook_k"].repeat_interleave(rep, dim=2), atol=ATOL, rtol=0)
    assert w.W_K(L, expand=True).data_ptr() != attn.k_proj.weight.data_ptr()  # expansion is a copy
    out = torch.einsum("bphe,hed->bpd", cache[f"blocks.{L}.attn.hook_z"], w.W_O(L))
    assert (w.b_O(L) is None) == (attn.o_proj.bias is None)
    with torch.no_grad():
        torch.testing.assert_close(out, attn.o_proj(cache[f"blocks.{L}.attn.hook_z"].flatten(-2)), atol=ATOL, rtol=0)
    with pytest.raises(IndexError, match="out of range"):
        w.W_Q(5)


# ----------------------------------------------------------------------------------------- edits
def hand_logits(model: MLLM, batch: Any, module: torch.nn.Module, pre: Callable | None = None,
                post: Callable | None = None) -> torch.Tensor:
    """Logits of a plain HF forward with one hand-written torch (pre-)hook."""
    h = module.register_forward_pre_hook(pre) if pre is not None else module.register_forward_hook(post)
    try:
        with torch.no_grad():
            return model.hf(**batch.inputs).logits
    finally:
        h.remove()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_head_ablation_via_hook_z_equals_hand_written_o_proj_hook(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch = batch2(model)
    attn, head = layer(model, arch).self_attn, 2
    dh = attn.head_dim

    def zero_z(z: torch.Tensor, _ctx: Any) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0
        return z

    def zero_slice(_m: torch.nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        x[..., head * dh:(head + 1) * dh] = 0
        return (x,)

    with model.hooks([(f"blocks.{L}.attn.hook_z", zero_z)]):
        got = model.forward(batch)
    want = hand_logits(model, batch, attn.o_proj, pre=zero_slice)
    plain = model.forward(batch)
    rows = real_rows(batch)
    assert not torch.allclose(want[rows], plain[rows], atol=1e-4)  # the ablation changes something
    torch.testing.assert_close(got[rows], want[rows], atol=ATOL, rtol=0)

    def zero_result(r: torch.Tensor, _ctx: Any) -> torch.Tensor:
        r = r.clone()
        r[:, :, head] = 0
        return r

    with model.hooks([(f"blocks.{L}.attn.hook_result", zero_result)]):  # the same ablation, after W_O
        torch.testing.assert_close(model.forward(batch)[rows], want[rows], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_norm_and_resid_mid_edits_equal_hand_edits(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch = batch2(model)
    lay = layer(model, arch)
    ln1, gemma = lay.input_layernorm, arch in GEMMA_NORM

    def edit(n: torch.Tensor) -> torch.Tensor:
        return n * 1.5 + 0.1

    def hand(m: torch.nn.Module, args: tuple, _out: torch.Tensor) -> torch.Tensor:
        x = args[0].float()
        n = edit((x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps_of(m))).to(args[0].dtype))
        return (n.float() * (1.0 + m.weight.float())).to(n.dtype) if gemma else m.weight * n

    with model.hooks([(f"blocks.{L}.ln1.hook_normalized", lambda n, _c: edit(n))]):
        got = model.forward(batch)
    rows = real_rows(batch)
    torch.testing.assert_close(got[rows], hand_logits(model, batch, ln1, post=hand)[rows], atol=ATOL, rtol=0)
    # halving the scale doubles the normalized value
    with model.hooks([(f"blocks.{L}.ln1.hook_scale", lambda s, _c: s / 2)]):
        got = model.forward(batch)
    with model.hooks([(f"blocks.{L}.ln1.hook_normalized", lambda n, _c: n * 2)]):
        torch.testing.assert_close(got[rows], model.forward(batch)[rows], atol=ATOL, rtol=0)
    # resid_mid + v: the residual the layer continues with (not only the MLP input) moves by v
    v = torch.linspace(-1, 1, model.d_model)
    with model.hooks([(f"blocks.{L}.hook_resid_mid", lambda r, _c: r + v)]):
        got = model.forward(batch)
    added = lay.post_attention_layernorm if arch in SANDWICH else lay.self_attn

    def add_v(_m: torch.nn.Module, _a: tuple, out: Any) -> Any:
        return (out[0] + v, *out[1:]) if isinstance(out, tuple) else out + v

    torch.testing.assert_close(got[rows], hand_logits(model, batch, added, post=add_v)[rows], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_rot_q_rot_k_and_scores_edits_equal_hand_edits(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch = batch2(model)
    attn, dh = layer(model, arch).self_attn, layer(model, arch).self_attn.head_dim
    rows = real_rows(batch)

    def zero_head(h: int) -> Callable[..., torch.Tensor]:
        def fn(t: torch.Tensor, _ctx: Any) -> torch.Tensor:
            t = t.clone()
            t[:, :, h] = 0
            return t
        return fn

    def zero_out_slice(h: int) -> Callable[..., torch.Tensor]:
        def hook(_m: torch.nn.Module, _a: tuple, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[..., h * dh:(h + 1) * dh] = 0
            return out
        return hook

    # a zero query (after RoPE) == a zero q_proj slice (RoPE and Gemma3's q_norm keep zero at zero)
    with model.hooks([(f"blocks.{L}.attn.hook_rot_q", zero_head(1))]):
        got = model.forward(batch)
    want = hand_logits(model, batch, attn.q_proj, post=zero_out_slice(1))
    torch.testing.assert_close(got[rows], want[rows], atol=ATOL, rtol=0)
    # ... == zero scores for that head on the allowed keys (uniform attention), through the eager finish
    with model.hooks([(f"blocks.{L}.attn.hook_attn_scores",
                       lambda s, _c: torch.where(torch.isneginf(s) | (torch.arange(s.shape[1]) != 1)[None, :, None, None],
                                                 s, torch.zeros_like(s)))]):
        torch.testing.assert_close(model.forward(batch)[rows], want[rows], atol=ATOL, rtol=0)
    with model.hooks([(f"blocks.{L}.attn.hook_attn_scores", lambda s, _c: s.clone())]):  # identity: HF's result
        torch.testing.assert_close(model.forward(batch)[rows], model.forward(batch)[rows], atol=ATOL, rtol=0)
    # a zero key (kv head 0) == a zero k_proj slice; also during generation: the edited keys enter the KV cache
    with model.hooks([(f"blocks.{L}.attn.hook_rot_k", zero_head(0))], steps="prefill"):
        gen = model.generate(batch, 3, min_new_tokens=3, return_logits=True)
    state = {"calls": 0}

    def prefill_only(m: torch.nn.Module, a: tuple, out: torch.Tensor) -> torch.Tensor | None:
        state["calls"] += 1
        return zero_out_slice(0)(m, a, out) if state["calls"] == 1 else None

    h = attn.k_proj.register_forward_hook(prefill_only)
    try:
        ref = model.generate(batch, 3, min_new_tokens=3, return_logits=True)
    finally:
        h.remove()
    assert state["calls"] == 3
    torch.testing.assert_close(gen.logits, ref.logits, atol=ATOL, rtol=0)
    assert torch.equal(gen.sequences, ref.sequences)


# ----------------------------------------------------------------------------------------- selection, errors
def test_hook_result_is_computed_only_when_named(models: Callable[..., MLLM]) -> None:
    model = models("llava")
    batch = model.prepare([tiny_image()], [PROMPTS[0]])
    _, everything = model.run_with_cache(batch)
    assert not any(n.endswith("hook_result") for n in everything) and "blocks.0.attn.hook_z" in everything
    _, attn = model.run_with_cache(batch, "blocks.*.attn.*")
    assert not any(n.endswith("hook_result") for n in attn)
    _, res = model.run_with_cache(batch, ["blocks.*.attn.hook_result", "blocks.0.attn.hook_z"])
    assert set(res) == {"blocks.0.attn.hook_result", "blocks.1.attn.hook_result", "blocks.0.attn.hook_z"}
    with pytest.raises(KeyError, match="spell the ending out"):
        model.run_with_cache(batch, "blocks.0.attn.hook_res*")


def test_scores_need_eager_attention(models: Callable[..., MLLM]) -> None:
    model = models("qwen2_vl", "sdpa")
    batch = model.prepare([tiny_image()], [PROMPTS[0]])
    with pytest.raises(ValueError, match="needs eager attention"):
        model.run_with_cache(batch, "blocks.0.attn.hook_attn_scores")
    with pytest.raises(ValueError, match="needs eager attention"):
        model.hooks([("blocks.0.attn.hook_attn_scores", lambda s, _c: s)]).__enter__()
    # the other per-head hooks work under sdpa and agree with the eager model
    names = ["blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k", "blocks.1.attn.hook_z"]
    _, sdpa = model.run_with_cache(batch, names)
    _, eager = models("qwen2_vl").run_with_cache(batch, names)
    for n in names:
        torch.testing.assert_close(sdpa[n], eager[n], atol=ATOL, rtol=0)


def test_edits_of_the_wrong_shape_are_refused(models: Callable[..., MLLM]) -> None:
    model = models("gemma3")
    batch = model.prepare([[tiny_image()]], [PROMPTS[0]])
    for name in ("blocks.0.attn.hook_z", "blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_rot_k"):
        with model.hooks([(name, lambda t, _c: t[..., :1])]), pytest.raises(ValueError, match="the hook's shape"):
            model.forward(batch)


def test_masked_scores_are_minus_infinity(models: Callable[..., MLLM]) -> None:
    model = models("llava")
    batch = model.prepare([tiny_image()], [PROMPTS[0]])
    _, cache = model.run_with_cache(batch, "blocks.0.attn.hook_attn_scores")
    s = cache["blocks.0.attn.hook_attn_scores"][0, 0]
    causal = torch.triu(torch.ones_like(s, dtype=torch.bool), diagonal=1)
    assert bool(torch.isneginf(s[causal]).all()) and bool(torch.isfinite(s[~causal]).all())
    assert math.isclose(float(torch.softmax(s, -1).sum(-1).mean()), 1.0, rel_tol=1e-6)


# ----------------------------------------------------------------------------------------- nnsight traces
@pytest.mark.parametrize("arch", ["gemma3", "qwen2_vl"])
def test_derived_hooks_read_and_write_inside_an_nnsight_trace(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch = model.prepare([tiny_image()], [PROMPTS[0]])
    names = [f"blocks.{L}.{h}" for h in ("ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
                                          "attn.hook_v", "attn.hook_z", "attn.hook_result", "hook_resid_mid",
                                          "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post")]
    names += ["ln_final.hook_scale", "ln_final.hook_normalized", "ln_final.hook_out"]
    _, cache = model.run_with_cache(batch, names)
    saved = {}
    with model.trace(batch):
        for n in names:
            saved[n] = model.read(n).save()
    for n in names:
        torch.testing.assert_close(saved[n], cache[n], atol=0, rtol=0, msg=n)
    v = torch.linspace(-1, 1, model.d_model)
    edits = [(f"blocks.{L}.attn.hook_z", lambda z: torch.cat([z[:, :, :2] * 0, z[:, :, 2:]], dim=2)),
             (f"blocks.{L}.ln2.hook_normalized", lambda n: n * 2), (f"blocks.{L}.hook_resid_mid", lambda r: r + v)]
    for name, fn in edits:
        with model.hooks([(name, lambda t, _c, fn=fn: fn(t))]):
            want = model.forward(batch)
        with model.trace(batch):
            model.write(name, fn(model.read(name)))
            got = model.envoy(model.adapter.lm_head).output.save()
        assert not torch.allclose(want, model.forward(batch), atol=1e-4), name
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=name)
    refusal = r"run_with_cache\(batch, names=\['blocks.1.attn.hook_rot_q'\]\)"
    with pytest.raises(ValueError, match=refusal), model.trace(batch):
        model.read(f"blocks.{L}.attn.hook_rot_q")


def test_norm_hooks_are_float32_and_exact_on_a_bfloat16_model() -> None:
    from moras_interp.models.loading import load_model
    from moras_interp.models.tiny import build_tiny

    for arch in ("llava", "paligemma"):  # w·n and (1 + w)·n
        hf, proc = build_tiny(arch)
        model = load_model(hf.to(torch.bfloat16), processor=proc)
        batch = model.prepare([tiny_image()], [PROMPTS[0]])
        ln1 = layer(model, arch).input_layernorm
        seen: dict[str, torch.Tensor] = {}
        h = ln1.register_forward_hook(lambda _m, a, o, seen=seen: seen.update(x=a[0], out=o))
        try:
            _, cache = model.run_with_cache(batch, [f"blocks.{L}.ln1.hook_scale", f"blocks.{L}.ln1.hook_normalized"])
        finally:
            h.remove()
        n, s = cache[f"blocks.{L}.ln1.hook_normalized"], cache[f"blocks.{L}.ln1.hook_scale"]
        assert n.dtype == s.dtype == torch.float32 and seen["out"].dtype == torch.bfloat16
        x = seen["x"].double()
        torch.testing.assert_close(s.double(), (x.pow(2).mean(-1, keepdim=True) + eps_of(ln1)).sqrt(), atol=1e-5, rtol=1e-5)
        out = (n * (1.0 + ln1.weight.float())).to(torch.bfloat16) if arch in GEMMA_NORM else ln1.weight * n.to(torch.bfloat16)
        assert torch.equal(out, seen["out"]), arch


def test_remote_execution_refuses_attention_call_hooks_by_name(models: Callable[..., MLLM]) -> None:
    model = models("llava")
    batch = model.prepare([tiny_image()], [PROMPTS[0]])
    model.remote = "local"
    try:
        with pytest.raises(ValueError, match=r"blocks.0.attn.hook_rot_q \(and 3 more\) cannot be read in remote"):
            model.run_with_cache(batch, "blocks.*.attn.hook_rot_*")
    finally:
        model.remote = False
