"""TransformerLens's cache API on tiny random models of every architecture, against hand-written references:
the decoder's own modules and weights read from the HF model (paths written from the transformers source), the
model's logits, formulas written out here, and TransformerLens's documented ``get_act_name`` examples."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from moras_interp.models import MLLM
from moras_interp.models.act_names import get_act_name
from moras_interp.models.norm_math import norm_affine
from moras_interp.models.tiny import TINY_ARCHS, tiny_image

DECODER = {"idefics3": "model.text_model"}  # every other tiny arch: model.language_model
GEMMA_NORM = {"gemma3", "paligemma"}  # Gemma's RMSNorm multiplies by (1 + w)
PROMPTS = ["what is in the image ?", "how do i make the item in the image ?"]
RESID = "blocks.*.hook_resid_*"


def _dec(model: MLLM, arch: str) -> Any:
    return model.hf.get_submodule(DECODER.get(arch, "model.language_model"))


def _batch(model: MLLM) -> Any:
    return model.prepare([tiny_image(seed=0), tiny_image(seed=1)], PROMPTS)


def _last(t: torch.Tensor, batch: Any) -> torch.Tensor:
    return t[torch.arange(len(batch)), [lay.last for lay in batch.layouts]]


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _final_weight(model: MLLM, arch: str) -> tuple[torch.Tensor, float]:
    norm = _dec(model, arch).norm
    w = norm.weight.detach().float()
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return (1.0 + w if arch in GEMMA_NORM else w), float(eps)


def test_get_act_name_matches_transformer_lens_examples() -> None:
    # the examples in transformer_lens.utils.get_act_name's docstring
    assert get_act_name("k", 6, "a") == "blocks.6.attn.hook_k"
    assert get_act_name("pre", 2) == "blocks.2.mlp.hook_pre"
    assert get_act_name("embed") == "hook_embed"
    assert get_act_name("normalized", 27, "ln2") == "blocks.27.ln2.hook_normalized"
    assert get_act_name("k6") == "blocks.6.attn.hook_k"
    assert get_act_name("scale4ln1") == "blocks.4.ln1.hook_scale"
    assert get_act_name("pre5") == "blocks.5.mlp.hook_pre"
    assert get_act_name("resid_pre", 0) == "blocks.0.hook_resid_pre"
    assert get_act_name("attn", 2) == "blocks.2.attn.hook_pattern"
    assert get_act_name("scale") == "ln_final.hook_scale"
    assert get_act_name("blocks.3.hook_mlp_out") == "blocks.3.hook_mlp_out"


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_indexing_decompose_accumulate(models: Any, arch: str) -> None:
    model = models(arch)
    batch = _batch(model)
    logits, cache = model.run_with_cache(batch, names_filter=["blocks.*.hook_*_out", RESID, "blocks.*.attn.hook_pattern"])
    n = model.n_layers
    assert cache["resid_pre", 0] is cache["blocks.0.hook_resid_pre"]
    assert cache["pattern", 1, "attn"] is cache["blocks.1.attn.hook_pattern"]
    assert cache["attn_out", -1] is cache[f"blocks.{n - 1}.hook_attn_out"]
    assert cache["resid_mid", 0] is cache["blocks.0.hook_resid_mid"]
    assert ("rot_q", 0) not in cache and ("mlp_out", 0) in cache
    final = cache[f"blocks.{n - 1}.hook_resid_post"]

    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed"] + [f"{l}_{k}" for l in range(n) for k in ("attn_out", "mlp_out")]
    torch.testing.assert_close(stack.sum(0), final, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.decompose_resid(layer=1).sum(0), cache["blocks.1.hook_resid_pre"], atol=1e-5,
                               rtol=1e-5)
    mid = cache.decompose_resid(layer=1, mlp_input=True).sum(0)  # resid_mid of layer 1: pre + attn_out
    torch.testing.assert_close(mid, cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"], atol=1e-5,
                               rtol=1e-5)

    acc, labels = cache.accumulated_resid(return_labels=True)
    assert labels == [f"{l}_pre" for l in range(n)] + ["final_post"]
    manual = torch.stack([cache[f"blocks.{l}.hook_resid_pre"] for l in range(n)] + [final])
    torch.testing.assert_close(acc, manual)
    acc_mid, labels = cache.accumulated_resid(layer=1, incl_mid=True, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid"]
    torch.testing.assert_close(acc_mid[3], cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"])
    # without resid_mid in the cache, it is resid_pre + attn_out
    _, small = model.run_with_cache(batch, names_filter=["blocks.*.hook_resid_pre", "blocks.*.hook_attn_out"])
    torch.testing.assert_close(small.accumulated_resid(layer=1, incl_mid=True)[1], cache["blocks.0.hook_resid_mid"])

    # logit lens through the model's own final norm and lm_head
    lens = cache.accumulated_resid(apply_ln=True, pos_slice="last")  # [n+1, b, d]
    dec = _dec(model, arch)
    torch.testing.assert_close(lens[-1] @ model.hf.lm_head.weight.T, _last(logits, batch), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lens[0], dec.norm(_last(cache["blocks.0.hook_resid_pre"], batch)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_norm_identified(models: Any, arch: str) -> None:
    model = models(arch)
    w, eps = _final_weight(model, arch)
    got = norm_affine(_dec(model, arch).norm)
    assert got.kind == ("gemma" if arch in GEMMA_NORM else "rms") and got.bias is None
    torch.testing.assert_close(got.weight, w)
    x = torch.randn(3, model.d_model)
    torch.testing.assert_close(got.scale(x), _rms(x, eps))


def test_layernorm_folding_is_exact() -> None:
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(16)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    aff = norm_affine(ln)
    assert aff.kind == "layer"
    parts = torch.randn(5, 3, 16) + 0.7
    x = parts.sum(0)
    normalized = aff.normalize(parts, aff.scale(x))  # each part with the scale of the whole
    ref = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    torch.testing.assert_close(normalized.sum(0), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normalized.sum(0) * ln.weight + ln.bias, ln(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_apply_ln_and_logit_attrs(models: Any, arch: str) -> None:
    model = models(arch)
    batch = _batch(model)
    logits, cache = model.run_with_cache(batch, names_filter=["blocks.*.hook_*_out", RESID])
    n = model.n_layers
    w, eps = _final_weight(model, arch)
    final = cache[f"blocks.{n - 1}.hook_resid_post"]
    scale = _rms(final, eps)

    stack = cache.decompose_resid()
    normed = cache.apply_ln_to_stack(stack)  # the scale recomputed from the cached final residual
    torch.testing.assert_close(normed.sum(0), final / scale, atol=1e-5, rtol=1e-5)
    # with the cached scale: the sum is TransformerLens's ln_final.hook_normalized (before the weight)
    _, with_ln = model.run_with_cache(batch, names_filter=["blocks.*.hook_*_out", RESID, "ln_final.hook_*"])
    torch.testing.assert_close(with_ln["scale"], scale, atol=1e-6, rtol=1e-5)
    normed_cached = with_ln.apply_ln_to_stack(with_ln.decompose_resid())
    torch.testing.assert_close(normed_cached.sum(0), with_ln["normalized"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normed_cached.sum(0) * w, with_ln["ln_final.hook_out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normed.sum(0) * w, _dec(model, arch).norm(final), atol=1e-5, rtol=1e-5)
    ln1 = _dec(model, arch).layers[1].input_layernorm
    x1 = cache["blocks.1.hook_resid_pre"]
    ln1_w = ln1.weight.detach() + (1.0 if arch in GEMMA_NORM else 0.0)
    torch.testing.assert_close(cache.apply_ln_to_stack(cache.decompose_resid(layer=1), layer=1).sum(0) * ln1_w,
                               ln1(x1), atol=1e-5, rtol=1e-5)

    good, bad = torch.tensor([5, 9]), torch.tensor([7, 3])
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice="last"), good, bad, pos_slice="last")  # [comp, b]
    last = _last(logits, batch)
    diff = last[torch.arange(2), good] - last[torch.arange(2), bad]
    torch.testing.assert_close(attrs.sum(0), diff, atol=1e-4, rtol=1e-4)
    w_u = model.hf.lm_head.weight.detach()  # [vocab, d]
    comp = _last(cache["blocks.0.hook_attn_out"], batch) / _last(scale, batch)
    by_hand = ((comp * w) * (w_u[good] - w_u[bad])).sum(-1)
    torch.testing.assert_close(attrs[1], by_hand, atol=1e-5, rtol=1e-5)
    # one token for every example and every position: [comp, b, pos]
    all_pos = cache.logit_attrs(stack, 4)
    torch.testing.assert_close(all_pos.sum(0), logits[..., 4], atol=1e-4, rtol=1e-4)


def test_position_groups(models: Any) -> None:
    model = models("llava")
    batch = _batch(model)
    _, cache = model.run_with_cache(batch, names_filter=["blocks.*.hook_*_out", RESID])
    stack = cache.decompose_resid(pos_slice="image")
    for e, lay in enumerate(batch.layouts):
        torch.testing.assert_close(stack[:, e], cache.decompose_resid()[:, e, lay.image_positions])
    torch.testing.assert_close(cache.decompose_resid(pos_slice="last")[2], cache.last("blocks.0.hook_mlp_out"))
    torch.testing.assert_close(cache.decompose_resid(pos_slice=-1), cache.decompose_resid()[:, :, -1])
    torch.testing.assert_close(cache.decompose_resid(pos_slice=(2, 5)), cache.decompose_resid()[:, :, 2:5])
    with pytest.raises(ValueError, match="same number"):
        cache.decompose_resid(pos_slice="instruction")  # the two prompts differ in length


def test_names_filter(models: Any) -> None:
    model = models("qwen2_vl")
    batch = _batch(model)

    def pred(name: str) -> bool:
        return name.endswith("hook_mlp_out") or name == "hook_logits"

    _, cache = model.run_with_cache(batch, names_filter=pred)
    assert list(cache) == [n for n in model.hook_names() if pred(n)]
    _, cache = model.run_with_cache(batch, names_filter="blocks.1.hook_resid_post")
    assert list(cache) == ["blocks.1.hook_resid_post"]
    _, cache = model.run_with_cache(batch, names=["blocks.*.hook_attn_out", "hook_logits"])  # the old argument
    assert list(cache) == ["blocks.0.hook_attn_out", "blocks.1.hook_attn_out", "hook_logits"]
    with pytest.raises(ValueError, match="not both"):
        model.run_with_cache(batch, names="hook_logits", names_filter="hook_logits")
    with pytest.raises(TypeError, match="True or False"):
        model.run_with_cache(batch, names_filter=lambda n: "yes")
    with pytest.raises(KeyError, match="no hook name"):
        model.run_with_cache(batch, names_filter=lambda n: False)


@pytest.mark.parametrize("arch", ["llava", "gemma3", "idefics3"])
def test_run_with_hooks_equals_torch_hook(models: Any, arch: str) -> None:
    model = models(arch)
    batch = _batch(model)
    seen: list[tuple[str, int, int]] = []

    def halve_last(value: torch.Tensor, hook: Any) -> torch.Tensor:  # TransformerLens signature
        seen.append((hook.name, hook.layer(), hook.step))
        value = value.clone()
        value[:, -1] *= 0.5
        return value

    got = model.run_with_hooks(batch, fwd_hooks=[(lambda n: n == "blocks.1.hook_resid_pre", halve_last)])
    assert seen == [("blocks.1.hook_resid_pre", 1, 0)]

    def pre(_m: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        x[:, -1] *= 0.5
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    h = _dec(model, arch).layers[1].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            ref = model.hf(**batch.inputs).logits
    finally:
        h.remove()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    plain = model.forward(batch)
    assert not torch.allclose(plain, ref, atol=1e-3)
    torch.testing.assert_close(model.forward(batch), plain)  # removed after the run

    # left installed until reset_hooks; a glob applies the fn at every matching hook
    model.run_with_hooks(batch, fwd_hooks=[("blocks.*.hook_resid_pre", halve_last)], reset_hooks_end=False)
    kept = model.forward(batch)
    model.reset_hooks()
    assert not torch.allclose(kept, plain, atol=1e-3)
    torch.testing.assert_close(model.forward(batch), plain)
    assert [s[:2] for s in seen[1:3]] == [("blocks.0.hook_resid_pre", 0), ("blocks.1.hook_resid_pre", 1)]
