"""Per-head analysis against hand-written references on tiny random models of every architecture:
``stack_head_results`` (each head by hand from ``hook_z`` and ``o_proj``'s weight; their sum is ``hook_attn_out``),
TransformerLens-style head ablation through ``run_with_hooks`` (vs a torch pre-hook on ``o_proj``), and ``head_dla``
(the per-source split adds up to each head's total, the heads to ``hook_attn_out``'s attribution, every component
to the model's own logit difference; one head by hand; sdpa = eager)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from moras_interp.attention import head_dla
from moras_interp.models import MLLM
from moras_interp.models.tiny import TINY_ARCHS, tiny_image

DECODER = {"idefics3": "model.text_model"}  # every other tiny arch: model.language_model
PROMPTS = ["what is in the image ?", "how do i make the item in the image ?"]


def _dec(model: MLLM, arch: str) -> Any:
    return model.hf.get_submodule(DECODER.get(arch, "model.language_model"))


def _batch(model: MLLM) -> Any:
    return model.prepare([tiny_image(seed=0), tiny_image(seed=1)], PROMPTS)


def _last(t: torch.Tensor, batch: Any) -> torch.Tensor:
    return t[torch.arange(len(batch)), [lay.last for lay in batch.layouts]]


def _final_weight_eps(model: MLLM, arch: str) -> tuple[torch.Tensor, float]:
    norm = _dec(model, arch).norm  # Gemma-family RMSNorms multiply by (1 + w)
    w = norm.weight.detach().float()
    return (1.0 + w if arch in ("gemma3", "paligemma") else w), float(getattr(norm, "variance_epsilon", None) or norm.eps)

@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_stack_head_results(models: Any, arch: str) -> None:
    model = models(arch)
    batch = _batch(model)
    _, cache = model.run_with_cache(batch, names_filter=["blocks.*.attn.hook_z", "blocks.*.hook_attn_out", "blocks.*.hook_resid_*"])
    stack, labels = cache.stack_head_results(return_labels=True)
    n_heads = model.cfg.num_attention_heads
    assert labels[: n_heads + 1] == [f"L0H{h}" for h in range(n_heads)] + ["L1H0"]
    dec = _dec(model, arch)
    for l in range(model.n_layers):
        o_proj = dec.layers[l].self_attn.o_proj
        heads = stack[l * n_heads:(l + 1) * n_heads]
        # each head by hand: its slice of z times its columns of o_proj.weight
        z = cache[f"blocks.{l}.attn.hook_z"]
        d_head = z.shape[-1]
        h = n_heads - 1
        torch.testing.assert_close(heads[h], z[..., h, :] @ o_proj.weight[:, h * d_head:(h + 1) * d_head].T,
                                   atol=1e-5, rtol=1e-5)
        out = heads.sum(0) + (o_proj.bias if o_proj.bias is not None else 0.0)
        if arch == "gemma3":  # the post-attention norm comes before the residual add
            out = dec.layers[l].post_attention_layernorm(out)
        torch.testing.assert_close(out, cache[f"blocks.{l}.hook_attn_out"], atol=1e-5, rtol=1e-5)
    with_rest = cache.stack_head_results(incl_remainder=True)
    torch.testing.assert_close(with_rest.sum(0), cache[f"blocks.{model.n_layers - 1}.hook_resid_post"], atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl", "gemma3"])
def test_run_with_hooks_head_ablation_via_hook_z(models: Any, arch: str) -> None:
    """TransformerLens's head ablation, fn(z, hook) zeroing one head, equals zeroing that head's slice of o_proj's
    input with a plain torch pre-hook; cached hook_result agrees with hook_z · W_O."""
    model = models(arch)
    batch = _batch(model)

    def ablate(z: torch.Tensor, hook: Any) -> None:
        assert hook.name == "blocks.1.attn.hook_z" and hook.layer() == 1
        z[:, :, 2] = 0.0  # in place, as TransformerLens users write it

    got = model.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
    o_proj = _dec(model, arch).layers[1].self_attn.o_proj
    d_head = model.weights.d_head

    def pre(_m: torch.nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        x[..., 2 * d_head:3 * d_head] = 0.0
        return (x, *args[1:])

    h = o_proj.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            ref = model.hf(**batch.inputs).logits
    finally:
        h.remove()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, model.forward(batch), atol=1e-4)

    _, cache = model.run_with_cache(batch, names_filter=["blocks.1.attn.hook_result", "blocks.1.attn.hook_z"])
    from_z = torch.einsum("bphd,hdm->bphm", cache["z", 1], o_proj.weight.detach().T.reshape(-1, d_head, model.d_model))
    torch.testing.assert_close(cache["result", 1], from_z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.head_results(1), cache["result", 1])


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_head_dla_decomposes_exactly(models: Any, arch: str) -> None:
    model = models(arch)
    batch = _batch(model)
    w, h = tiny_image().size
    dla = head_dla(model, batch, 5, 7, box=(0, 0, w / 2, h))
    torch.testing.assert_close(dla.image + dla.text, dla.total, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dla.by_source.sum(-1), dla.total)
    torch.testing.assert_close(dla.total.sum(-1) + dla.attn_bias, dla.layer_attn, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dla.embed + dla.layer_attn.sum(-1) + dla.layer_mlp.sum(-1), dla.logit_diff,
                               atol=1e-4, rtol=1e-4)
    for e, lay in enumerate(batch.layouts):  # the region is a non-empty subset of the image tokens
        reg = dla.region_positions[e]
        assert 0 < reg.numel() < lay.images[0].grid_positions().numel()
        assert set(reg.tolist()) <= set(lay.image_positions.tolist())
        torch.testing.assert_close(dla.region[e], dla.by_source[e][..., reg].sum(-1))

    if arch == "gemma3":
        return
    # one head by hand, from hook_z and the weights (non-Gemma3: no post-attention norm)
    final = f"blocks.{model.n_layers - 1}.hook_resid_post"
    _, cache = model.run_with_cache(batch, names_filter=["blocks.1.attn.hook_z", final])
    fw, eps = _final_weight_eps(model, arch)
    w_u = model.hf.lm_head.weight.detach()
    z = _last(cache["blocks.1.attn.hook_z"], batch)[:, 2]  # [b, d_head], head 2
    o_w = _dec(model, arch).layers[1].self_attn.o_proj.weight.detach()
    result = z @ o_w[:, 2 * z.shape[-1]:3 * z.shape[-1]].T
    x = _last(cache[final], batch)
    scale = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    by_hand = (result / scale * fw * (w_u[5] - w_u[7])).sum(-1)
    torch.testing.assert_close(dla.total[:, 1, 2], by_hand, atol=1e-5, rtol=1e-5)


def test_head_dla_sdpa_matches_eager(models: Any) -> None:
    eager, sdpa = models("qwen2_vl"), models("qwen2_vl", "sdpa")
    a, b = head_dla(eager, _batch(eager), 5, 7), head_dla(sdpa, _batch(sdpa), 5, 7)
    torch.testing.assert_close(a.image, b.image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.text, b.text, atol=1e-5, rtol=1e-4)


def test_analysis_doc_example_runs() -> None:
    """docs/analysis.md's worked example runs as written on the organism (its asserts are the checks)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "analysis.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    scope: dict = {}
    exec(compile(code, "docs/analysis.md", "exec"), scope)  # our own documentation
    dla = scope["dla"]
    assert dla.total.shape == (4, scope["model"].n_layers, scope["model"].cfg.num_attention_heads)
    assert dla.region is not None and dla.region[0].abs().sum() > 0
