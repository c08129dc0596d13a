"""The TransformerLens derived hook points on the nnsight backend, on all 8 tiny architectures.

Per-head (``attn.hook_q/k/v/z/result``), norm (``ln*.hook_scale`` / ``hook_normalized``) and ``hook_resid_mid``
points are computed in the nnsight graph from the module input/output it sees and written back through the same
inverses as the torch-hook dispatcher; their exactness against hand-written references is
``tests/test_tl_hooks.py`` (hooks backend). Here: the nnsight backend gives the same tokens, logits and read values
as the hooks backend under edits at every such point (two edits at one norm, per-head edits, decode-only and
prefill-only steps, a left-padded batch), and the attention-call points (``hook_rot_q`` / ``hook_rot_k`` /
``hook_attn_scores``), which a graph cannot reach, are refused naming the hook and ``backend='hooks'``.
"""

from __future__ import annotations

import pytest
import torch

from moras_interp.models.tiny import TINY_ARCHS, tiny_image

NEW = 3
PROMPTS = ["what is in the image", "describe the picture in the image please"]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _batch(model):
    return model.prepare([tiny_image(60, 40, seed=1), tiny_image(50, 50, seed=2)], PROMPTS)


def _head(i: int, factor: float):
    def edit(v, ctx):  # [b, pos, heads, d_head] (or [.., heads, d] for hook_result): one head scaled
        out = v.clone()
        out[..., i, :] *= factor
        return out
    return edit


def _edits(model):
    g = torch.Generator().manual_seed(3)
    push = torch.randn(model.d_model, generator=g)
    return [  # (name, fn, steps)
        ("blocks.0.ln1.hook_scale", lambda v, c: v * 1.3, "prefill"),
        ("blocks.0.ln1.hook_normalized", lambda v, c: v * 0.8, None),  # after the scale edit at the same norm
        ("blocks.0.attn.hook_q", _head(0, 0.0), None),
        ("blocks.0.attn.hook_v", _head(0, 2.0), [0, 2]),
        ("blocks.1.attn.hook_k", _head(0, 1.5), None),
        ("blocks.1.attn.hook_z", _head(1, 2.0), "decode"),
        ("blocks.1.attn.hook_result", _head(0, 0.5), None),
        ("blocks.1.hook_resid_mid", lambda v, c: v + 0.5 * push, "decode"),
        ("blocks.1.ln2.hook_normalized", lambda v, c: v * 0.9, None),
        ("blocks.1.mlp.hook_pre", lambda v, c: v * 1.2, [0, 1]),
        ("blocks.1.mlp.hook_post", lambda v, c: v + 0.05, None),
        ("ln_final.hook_scale", lambda v, c: v * 1.1, "decode"),
    ]


READS = ["blocks.0.ln1.hook_scale", "blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_q", "blocks.0.attn.hook_v",
         "blocks.1.attn.hook_k", "blocks.1.attn.hook_z", "blocks.1.attn.hook_result", "blocks.1.hook_resid_mid",
         "blocks.1.ln2.hook_scale", "blocks.1.ln2.hook_normalized", "blocks.1.mlp.hook_pre",
         "blocks.1.mlp.hook_post", "ln_final.hook_scale", "ln_final.hook_normalized", "ln_final.hook_out"]


def _generate(model, batch, backend: str, edit: bool = True):
    reads: dict[str, list] = {}

    def keep(name):
        def fn(v, ctx):
            reads.setdefault(name, []).append((ctx.step, v.detach().clone()))
        return fn

    with torch.no_grad():
        handles = [model.hooks([(n, f)], steps=s) for n, f, s in (_edits(model) if edit else [])]
        handles.append(model.hooks([(n, keep(n)) for n in READS], steps=[0, 1, 2], read=True))
        for h in handles:
            h.__enter__()
        try:
            gen = model.generate(batch, NEW, min_new_tokens=NEW, return_logits=True, backend=backend)
        finally:
            for h in reversed(handles):
                h.__exit__(None, None, None)
    return gen, reads


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_derived_hook_edits_and_reads_same_on_both_backends(models, arch):
    model = models(arch)
    batch = _batch(model)
    g_h, r_h = _generate(model, batch, "hooks")
    g_n, r_n = _generate(model, batch, "nnsight")
    assert torch.equal(g_h.new_tokens, g_n.new_tokens)
    torch.testing.assert_close(g_n.logits, g_h.logits, **TOL)
    assert sorted(r_h) == sorted(r_n) == sorted(READS)
    for name in READS:
        assert [s for s, _ in r_n[name]] == [s for s, _ in r_h[name]] == [0, 1, 2], name
        for (_, a), (_, b) in zip(r_h[name], r_n[name]):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            torch.testing.assert_close(b, a, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    plain, r_plain = _generate(model, batch, "nnsight", edit=False)
    assert not torch.allclose(plain.logits, g_n.logits)  # the edits changed the run
    # the edited values are what the model went on with: reads after the edit see it
    torch.testing.assert_close(r_n["blocks.0.ln1.hook_scale"][0][1], r_plain["blocks.0.ln1.hook_scale"][0][1] * 1.3)
    q = r_n["blocks.0.attn.hook_q"][0][1]
    assert bool((q[..., 0, :] == 0).all()) and not bool((q[..., 1, :] == 0).all())


@pytest.mark.parametrize("arch", ["llava", "gemma3", "qwen2_vl"])
def test_run_with_cache_every_reachable_hook_same_on_both_backends(models, arch):
    """Every hook the graph can reach (vision, per-head, norms, hook_result, patterns), read in one forward."""
    model = models(arch)
    batch = _batch(model)
    names = [n for n in model.hook_names() if model.hook_point(n).io != "call"]
    assert "blocks.0.attn.hook_result" in names and "blocks.1.ln2.hook_scale" in names
    lh, ch = model.run_with_cache(batch, names, backend="hooks")
    ln, cn = model.run_with_cache(batch, names, backend="nnsight")
    torch.testing.assert_close(ln, lh, **TOL)
    for n in names:
        torch.testing.assert_close(cn[n], ch[n], **TOL, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("view", ["attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores"])
def test_attention_call_hooks_are_refused_on_nnsight_naming_the_hook(models, view):
    model = models("llava")
    batch = _batch(model)
    name = f"blocks.1.{view}"
    match = rf"{name}.*backend='hooks'"
    with model.hooks([(name, lambda v, c: v * 1.0)]):
        with pytest.raises(NotImplementedError, match=match):
            model.generate(batch, 2, backend="nnsight")
        with pytest.raises(NotImplementedError, match=match):
            model.forward(batch, backend="nnsight")
        model.generate(batch, 2, backend="hooks")  # the hooks backend runs it
    with pytest.raises(ValueError, match=match):  # NotInGraphError is both
        model.run_with_cache(batch, [name], backend="nnsight")
    assert model.run_with_cache(batch, [name], backend="hooks")[1][name].ndim == 4
