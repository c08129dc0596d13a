"""The two execution backends ("hooks": torch hooks; "nnsight": one intervention graph) on all 8 tiny architectures.

The same ``model.hooks`` edits and reads (per-example strengths, left-padded batches, prefill and chosen decode
steps, module inputs, outputs and tuple elements) must give the same tokens, and logits / read values within
float tolerance, on both backends; and both must equal a hand-written torch hook on plain HF ``generate``.
"""

from __future__ import annotations

import pytest
import torch

from moras_interp.activations import collect_activations, steer
from moras_interp.models.tiny import TINY_ARCHS, tiny_image

NEW = 4
QUESTIONS = ["what is in the image", "describe the picture in the image please"]


def _batch(model):
    return model.prepare([tiny_image(60, 40, seed=1), tiny_image(50, 50, seed=2)], QUESTIONS)


def _vec(model, seed: int) -> torch.Tensor:
    return torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))


def _run(model, batch, backend: str):
    """Edits at an input, an output and a tuple element; reads at a decoder output, the final norm, a vision
    layer (prefill only) and the logits. Returns (generation, {name: [(step, value)]})."""
    reads: dict[str, list] = {}

    def keep(name):
        def fn(v, ctx):
            reads.setdefault(name, []).append((ctx.step, v.detach().clone()))
        return fn

    v0, v1 = _vec(model, 1), _vec(model, 2)
    alpha = torch.tensor([2.0, -1.0])  # per-example strengths

    def add_last(v, ctx, vec=v1):
        out = v.clone()
        out[:, -1] += alpha[:, None] * vec
        return out

    def scale_attn(v, ctx):
        return v * 1.5

    edits = [("blocks.1.hook_resid_pre", add_last), ("blocks.0.hook_attn_out", scale_attn)]
    names = ["vision.blocks.0.hook_resid_post", "blocks.0.hook_resid_post", "ln_final.hook_out",
             "hook_logits"]
    with steer(model, {"blocks.0.hook_resid_post": v0}, alpha=alpha * 0.5, positions="last", steps=[0, 2],
               layouts=batch.layouts), \
            model.hooks(edits[:1], steps="decode"), model.hooks(edits[1:], steps="prefill"), \
            model.hooks([(n, keep(n)) for n in names], steps=[0, 1, 3], read=True):
        gen = model.generate(batch, NEW, min_new_tokens=NEW, return_logits=True, backend=backend)
    return gen, reads


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_generate_parity_hooks_vs_nnsight(models, arch):
    model = models(arch)
    batch = _batch(model)
    assert bool((batch.inputs["attention_mask"][:, 0] == 0).any())  # a left-padded row
    g_h, r_h = _run(model, batch, "hooks")
    g_n, r_n = _run(model, batch, "nnsight")
    assert torch.equal(g_h.new_tokens, g_n.new_tokens)
    torch.testing.assert_close(g_n.logits, g_h.logits, rtol=1e-5, atol=1e-5)
    assert r_h.keys() == r_n.keys() and "vision.blocks.0.hook_resid_post" in r_n
    for name in r_h:
        assert [s for s, _ in r_h[name]] == [s for s, _ in r_n[name]], name
        for (_, a), (_, b) in zip(r_h[name], r_n[name]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert [s for s, _ in r_n["vision.blocks.0.hook_resid_post"]] == [0]  # the vision tower runs at the prefill
    plain = model.generate(batch, NEW, min_new_tokens=NEW, return_logits=True)
    assert not torch.allclose(plain.logits, g_n.logits)  # the edits did something


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_nnsight_steering_equals_plain_hf_with_a_torch_hook(models, arch):
    """Per-example α at the last position of layer 1's output, at steps 0 and 2 only, against a hand-written
    forward hook on plain HF generate."""
    model = models(arch)
    batch = _batch(model)
    v, alpha = _vec(model, 5), torch.tensor([3.0, -2.0])
    layer = model.adapter.module(model.adapter.decoder + ".layers.1")
    step = {"t": -1}

    def count(_m, _a, _k):
        step["t"] += 1

    def add(_m, _a, out):
        if step["t"] in (0, 2):
            out = out.clone()
            out[:, -1] += alpha[:, None] * v
        return out

    hs = [model.hf.register_forward_pre_hook(count, with_kwargs=True), layer.register_forward_hook(add)]
    try:
        with torch.no_grad():
            ref = model.hf.generate(**batch.inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                    output_logits=True, return_dict_in_generate=True,
                                    pad_token_id=model.tokenizer.pad_token_id)
    finally:
        for h in hs:
            h.remove()
    with steer(model, {"blocks.1.hook_resid_post": v}, alpha=alpha, positions="last", steps=[0, 2],
               layouts=batch.layouts, backend="nnsight"):
        assert model.backend == "nnsight"
        got = model.generate(batch, NEW, min_new_tokens=NEW, return_logits=True)
    assert model.backend == "hooks"
    n = batch.input_ids.shape[1]
    assert torch.equal(got.new_tokens, ref.sequences[:, n:])
    torch.testing.assert_close(got.logits, torch.stack(list(ref.logits), 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "gemma3"])
def test_forward_and_cache_parity_against_hf(models, arch):
    model = models(arch)
    batch = _batch(model)
    with torch.no_grad():
        ref = model.hf(**batch.inputs, output_hidden_states=True)
    logits, cache = model.run_with_cache(batch, "blocks.*.hook_resid_post", backend="nnsight")
    torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.forward(batch, backend="nnsight"), ref.logits, rtol=1e-5, atol=1e-5)
    last = cache[f"blocks.{model.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], ref.hidden_states[1], rtol=1e-5, atol=1e-5)
    h_logits, h_cache = model.run_with_cache(batch, "blocks.*.hook_resid_post", backend="hooks")
    torch.testing.assert_close(last, h_cache[f"blocks.{model.n_layers - 1}.hook_resid_post"])
    torch.testing.assert_close(logits, h_logits)


def test_early_eos_keeps_tokens_and_reads(models):
    """A generation that stops before the loop's last step (EOS) still returns its ids and the reads of the
    steps that ran, equal to the hooks backend."""
    model = models("llava")
    batch = _batch(model)
    eos = model.tokenizer.eos_token_id
    first = int(model.generate(batch, 1).new_tokens[0, 0])
    model.hf.generation_config.eos_token_id = first  # every row stops at its first token
    try:
        out = {}
        for backend in ("hooks", "nnsight"):
            seen: list[int] = []
            with model.hooks([("blocks.0.hook_resid_post", lambda v, c, seen=seen: seen.append(c.step))], read=True):
                g = model.generate(batch, 6, backend=backend)
            out[backend] = (g.new_tokens, seen)
    finally:
        model.hf.generation_config.eos_token_id = eos
    assert torch.equal(out["hooks"][0], out["nnsight"][0]) and out["nnsight"][1] == out["hooks"][1]
    assert out["nnsight"][0].shape[1] < 6


def test_collect_activations_parity(models):
    model = models("qwen2_vl")
    examples = [(tiny_image(60, 40, seed=i), q, "safe") for i, q in enumerate(QUESTIONS * 2)]
    a = collect_activations(model, examples, names="blocks.*.hook_resid_post", batch_size=3, progress=False)
    b = collect_activations(model, examples, names="blocks.*.hook_resid_post", batch_size=3, progress=False,
                            backend="nnsight")
    for h in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"):
        torch.testing.assert_close(b.load(h), a.load(h), rtol=1e-5, atol=1e-5)


def test_backend_errors(models):
    model = models("llava")
    batch = _batch(model)
    with pytest.raises(ValueError, match=r"backend='nsight'.*'hooks'"):
        model.generate(batch, 1, backend="nsight")
    with pytest.raises(ValueError, match="backend="), model.using("torch"):
        pass
