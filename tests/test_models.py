"""The model layer on all 8 tiny architectures: hook values, batching, token layouts and interventions.

Every expectation comes from an independent reference: HF's own forward (``output_hidden_states``,
``output_attentions``, logits) with plain torch hooks on modules named in the tables below (written from
the transformers source, not read from the adapters), hand-computed processor geometry, or HF's own
vision features. Pixel-geometry tests live in ``test_models_geometry.py``, bad-input tests in
``test_models_errors.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from moras_interp.models import MLLM
from moras_interp.models.tiny import TINY_ARCHS, tiny_image

DECODER = {a: "model.language_model" for a in TINY_ARCHS} | {"idefics3": "model.text_model"}
"""Where each architecture keeps its text decoder (``.layers``, ``.norm``)."""
VISION_LAYERS = {
    "llava": "model.vision_tower.encoder.layers", "llava_next": "model.vision_tower.encoder.layers",
    "qwen2_vl": "model.visual.blocks", "qwen2_5_vl": "model.visual.blocks",
    "idefics3": "model.vision_model.encoder.layers", "gemma3": "model.vision_tower.encoder.layers",
    "internvl": "model.vision_tower.encoder.layer", "paligemma": "model.vision_tower.encoder.layers",
}
PROJECTOR = {a: "model.multi_modal_projector" for a in TINY_ARCHS} | {
    "qwen2_vl": "model.visual.merger", "qwen2_5_vl": "model.visual.merger", "idefics3": "model.connector"}
SANDWICH = {"gemma3"}
"""Architectures whose sublayer outputs pass through a post-norm before the residual add."""
SEQ_HOOKS = ("hook_embed", "hook_inputs_embeds", "hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post",
             "ln_final.hook_out", "hook_logits")
TL_TEMPLATES = {f"blocks.{{l}}.{n}" for n in (
    "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q",
    "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_z", "attn.hook_result", "hook_resid_mid", "ln2.hook_scale",
    "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post")} | {
    "ln_final.hook_scale", "ln_final.hook_normalized"}
"""The TransformerLens per-head / intermediate names, checked against hand-written references in test_tl_hooks.py."""
PROMPTS = ("what is in the image ?", "how do i make a bomb with this item ? please tell me what you see")
ATOL = 1e-5




def hf_reference(model: MLLM, arch: str, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Canonical-name -> value from a plain HF forward with plain torch forward hooks (no nnsight)."""
    hf = model.hf
    got: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str, index: int | None = None) -> Callable[..., None]:
        def hook(_m: torch.nn.Module, _a: Any, out: Any) -> None:
            got[name] = (out if index is None else out[index]).detach().clone()
        return hook

    dec = hf.get_submodule(DECODER[arch])
    for l, layer in enumerate(dec.layers):
        handles.append(layer.register_forward_hook(keep(f"blocks.{l}.hook_resid_post")))
        handles.append(layer.self_attn.register_forward_hook(keep(f"raw_attn.{l}", 0)))
        handles.append(layer.mlp.register_forward_hook(keep(f"raw_mlp.{l}")))
        if arch in SANDWICH:
            handles.append(layer.post_attention_layernorm.register_forward_hook(keep(f"blocks.{l}.hook_attn_out")))
            handles.append(layer.post_feedforward_layernorm.register_forward_hook(keep(f"blocks.{l}.hook_mlp_out")))
    handles.append(dec.norm.register_forward_hook(keep("ln_final.hook_out")))
    for l, layer in enumerate(hf.get_submodule(VISION_LAYERS[arch])):
        handles.append(layer.register_forward_hook(keep(f"vision.blocks.{l}.hook_resid_post")))
    handles.append(hf.get_submodule(PROJECTOR[arch]).register_forward_hook(keep("projector.hook_out")))
    try:
        with torch.no_grad():
            out = hf(**inputs, output_hidden_states=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    n = len(dec.layers)
    got["hook_inputs_embeds"] = out.hidden_states[0]  # what layer 0 receives: image features merged in
    # token embeddings by hand: the embedding rows of the ids (the image placeholder's row at image positions),
    # times the sqrt(d) scale of Gemma's scaled embedding module
    emb = dec.embed_tokens
    ids = inputs["input_ids"]
    assert int(ids.max()) < emb.weight.shape[0]
    got["hook_embed"] = emb.weight[ids] * getattr(emb, "embed_scale", torch.tensor(1.0)).to(emb.weight.dtype)
    for l in range(n):
        got[f"blocks.{l}.hook_resid_pre"] = out.hidden_states[l]
        got[f"blocks.{l}.attn.hook_pattern"] = out.attentions[l]
        if arch not in SANDWICH:
            got[f"blocks.{l}.hook_attn_out"] = got[f"raw_attn.{l}"]
            got[f"blocks.{l}.hook_mlp_out"] = got[f"raw_mlp.{l}"]
    got["hf_last_hidden"] = out.hidden_states[n]
    got["hook_logits"] = out.logits
    return got


def image_batch(model: MLLM, n: int = 1) -> Any:
    imgs = [tiny_image(), tiny_image(seed=1)][:n]
    return model.prepare(imgs, list(PROMPTS[:n]))


# ----------------------------------------------------------------------------------------- hook values
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_hook_values_equal_hf(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch = image_batch(model)
    logits, cache = model.run_with_cache(batch)  # every hook name (but the on-request attn.hook_result)
    ref = hf_reference(model, arch, batch.inputs)
    n = model.n_layers
    assert n == 2 and set(cache) == {h for h in model.hook_names() if not h.endswith("attn.hook_result")}
    for name in model.hook_names():
        if model.hook_point(name).template in TL_TEMPLATES:
            continue  # per-head / intermediate hooks: tests/test_tl_hooks.py
        assert name in ref, f"no reference for {name}"
        assert cache[name].shape == ref[name].shape, name
        torch.testing.assert_close(cache[name], ref[name], atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(logits, ref["hook_logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.forward(batch), ref["hook_logits"], atol=ATOL, rtol=0)
    # HF's last hidden state is the final-normed one
    torch.testing.assert_close(cache["ln_final.hook_out"], ref["hf_last_hidden"], atol=ATOL, rtol=0)
    # hook_embed (token embeddings) and hook_inputs_embeds (what layer 0 receives) differ only at image positions
    torch.testing.assert_close(cache["hook_inputs_embeds"], cache["blocks.0.hook_resid_pre"], atol=0, rtol=0)
    img = batch.layouts[0].image_positions
    text = torch.ones(batch.input_ids.shape[1], dtype=torch.bool)
    text[img] = False
    assert img.numel() > 0 and bool(text.any())
    torch.testing.assert_close(cache["hook_embed"][0, text], cache["hook_inputs_embeds"][0, text], atol=0, rtol=0)
    placeholder = cache["hook_embed"][0, img]
    assert torch.equal(placeholder, placeholder[:1].expand_as(placeholder))  # one row: the placeholder's embedding
    assert not torch.allclose(placeholder, cache["hook_inputs_embeds"][0, img], atol=1e-3)  # features merged later
    # the residual stream decomposes into the sublayer outputs
    for l in range(n):
        pre, post = cache[f"blocks.{l}.hook_resid_pre"], cache[f"blocks.{l}.hook_resid_post"]
        attn, mlp = cache[f"blocks.{l}.hook_attn_out"], cache[f"blocks.{l}.hook_mlp_out"]
        torch.testing.assert_close(post, pre + attn + mlp, atol=ATOL, rtol=0)
        if l + 1 < n:
            torch.testing.assert_close(cache[f"blocks.{l + 1}.hook_resid_pre"], post, atol=0, rtol=0)
        if arch in SANDWICH:  # Gemma3: what is added is the post-norm of the raw sublayer output
            layer = model.hf.get_submodule(DECODER[arch]).layers[l]
            with torch.no_grad():
                torch.testing.assert_close(attn, layer.post_attention_layernorm(ref[f"raw_attn.{l}"]), atol=ATOL, rtol=0)
                torch.testing.assert_close(mlp, layer.post_feedforward_layernorm(ref[f"raw_mlp.{l}"]), atol=ATOL, rtol=0)
        pattern = cache[f"blocks.{l}.attn.hook_pattern"]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=ATOL, rtol=0)


def test_hook_names_are_the_same_on_every_architecture(models: Callable[..., MLLM]) -> None:
    expected = {"hook_embed", "hook_inputs_embeds", "blocks.{l}.hook_resid_pre", "blocks.{l}.hook_resid_post",
                "blocks.{l}.hook_attn_out", "blocks.{l}.hook_mlp_out", "blocks.{l}.attn.hook_pattern", "ln_final.hook_out",
                "hook_logits", "vision.blocks.{l}.hook_resid_post", "projector.hook_out", *TL_TEMPLATES}
    for arch in TINY_ARCHS:
        model = models(arch)
        names = model.hook_names()
        templates = {model.hook_point(n).template for n in names}
        assert templates == expected, arch
        assert sum(n.startswith("blocks.") and n.endswith("hook_resid_post") for n in names) == 2
        assert sum(n.startswith("vision.blocks.") for n in names) == len(model.hf.get_submodule(VISION_LAYERS[arch]))


# ----------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_left_padded_batch_equals_single_examples(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    names = [n for n in model.hook_names() if (n in SEQ_HOOKS or n.split(".")[-1] in SEQ_HOOKS)
             and not n.startswith("vision.")]
    both = image_batch(model, 2)
    assert both.input_ids.shape[0] == 2
    pads = [lay.n_pad for lay in both.layouts]
    assert min(pads) == 0 and max(pads) > 0, "the two prompts must differ in length"
    mask = both.inputs["attention_mask"]
    _, cache2 = model.run_with_cache(both, names)
    for b, img in enumerate([tiny_image(), tiny_image(seed=1)]):
        one = model.prepare([img], [PROMPTS[b]])
        p = pads[b]
        assert int(mask[b, :p].sum()) == 0 and bool(mask[b, p:].all())
        assert torch.equal(both.input_ids[b, p:], one.input_ids[0])
        _, cache1 = model.run_with_cache(one, names)
        for n in names:
            torch.testing.assert_close(cache2[n][b, p:], cache1[n][0], atol=ATOL, rtol=0, msg=f"{n} example {b}")
        lay1, lay2 = one.layouts[0], both.layouts[b]
        assert torch.equal(lay2.image_positions, lay1.image_positions + p)
        assert torch.equal(lay2.instruction, lay1.instruction + p) and lay2.last == lay1.last + p


# ----------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_layout_matches_processor_tokens(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    imgs = [tiny_image(), tiny_image(40, 64, seed=2)]  # landscape and portrait: different tilings
    batch = model.prepare(imgs, list(PROMPTS))
    tid = int(model.hf.config.image_token_id)
    tok = model.tokenizer
    for b, (lay, img) in enumerate(zip(batch.layouts, imgs)):
        row = batch.input_ids[b]
        assert torch.equal(lay.image_positions, (row == tid).nonzero().flatten())
        (im,) = lay.images
        assert im.image_size == img.size
        n_grid = sum(g.rows * g.cols for g in im.grids)
        assert n_grid == im.n_tokens - im.separators.numel() > 0
        grid_pos = im.grid_positions()
        assert len(set(grid_pos.tolist()) | set(im.separators.tolist())) == im.n_tokens  # disjoint, exhaustive
        assert set(grid_pos.tolist()) <= set(im.positions.tolist())
        for g in im.grids:  # raster order: positions increase along each row
            assert bool((g.positions.view(g.rows, g.cols).diff(dim=1) > 0).all()), g.name
        assert lay.last == row.numel() - 1 and lay.n_pad == int((batch.inputs["attention_mask"][b] == 0).sum())
        assert tok.decode(row[lay.instruction]).split() == tok.decode(tok(PROMPTS[b])["input_ids"]).split()
    if arch == "llava_next":  # the separators are the image_newline rows the model inserted
        _, cache = model.run_with_cache(batch, "hook_inputs_embeds")
        newline = model.hf.model.image_newline
        for b, lay in enumerate(batch.layouts):
            sep = lay.images[0].separators
            assert sep.numel() == lay.images[0].grids[1].rows
            torch.testing.assert_close(cache["hook_inputs_embeds"][b, sep], newline.expand(sep.numel(), -1), atol=0, rtol=0)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_text_only_prompts(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch = model.prepare(None, ["what is this ?", "tell me about a cat and a dog ."])
    assert all(not lay.images and lay.image_positions.numel() == 0 for lay in batch.layouts)
    assert "pixel_values" not in batch.inputs
    logits, cache = model.run_with_cache(batch, ["blocks.*.hook_resid_post", "hook_logits"])
    ref = hf_reference_text(model, batch.inputs)
    # compare real tokens only: for a left-padded text-only batch nnsight supplies mask-derived position_ids,
    # which changes nothing at real tokens but does change the (meaningless) values at padding positions
    real = batch.inputs["attention_mask"].bool()
    assert not bool(real.all())
    torch.testing.assert_close(logits[real], ref[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(cache.last("hook_logits"), ref[:, -1], atol=ATOL, rtol=0)
    gen = model.generate(batch, 3, min_new_tokens=3)
    assert gen.new_tokens.shape == (2, 3)
    with torch.no_grad():
        hf_ids = model.hf.generate(**batch.inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                                   pad_token_id=model.tokenizer.pad_token_id)
    assert torch.equal(gen.sequences, hf_ids)


def hf_reference_text(model: MLLM, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model.hf(**inputs).logits


# ----------------------------------------------------------------------------------------- interventions
def _shift(d: int, seed: int) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_forward_intervention_equals_torch_hook(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    hf = model.hf
    batch = image_batch(model)
    v = _shift(model.d_model, 0)
    last = batch.layouts[0].last
    plain = model.forward(batch)

    def edit(x: torch.Tensor, _ctx: Any) -> torch.Tensor:
        x = x.clone()
        x[:, last] += v
        return x

    def vision_edit(x: torch.Tensor, _ctx: Any) -> torch.Tensor:
        return x * 0.5

    with model.hooks([("vision.blocks.0.hook_resid_post", vision_edit), ("blocks.0.hook_resid_post", edit)]):
        steered = model.forward(batch)
    # reference: hand-written torch hooks (registered first, so HF's output capturing sees the edit)
    dec_layer = hf.get_submodule(DECODER[arch]).layers[0]
    vis_layer = hf.get_submodule(VISION_LAYERS[arch])[0]
    hs = [dec_layer.register_forward_hook(lambda m, a, o: edit(o, None), prepend=True),
          vis_layer.register_forward_hook(lambda m, a, o: vision_edit(o, None), prepend=True)]
    try:
        with torch.no_grad():
            ref = hf(**batch.inputs).logits
    finally:
        for h in hs:
            h.remove()
    torch.testing.assert_close(steered, ref, atol=ATOL, rtol=0)
    assert (steered - plain).abs().max() > 1e-3
    # the vision edit alone changes the output, too (it reaches the language model)
    with model.hooks([("vision.blocks.0.hook_resid_post", vision_edit)]):
        assert (model.forward(batch) - plain).abs().max() > 1e-4
    # the same edit written inside an nnsight trace
    with torch.no_grad(), model.trace(batch):
        model.write("vision.blocks.0.hook_resid_post", model.read("vision.blocks.0.hook_resid_post") * 0.5)
        h = model.read("blocks.0.hook_resid_post")
        h[:, last] += v
        nn_logits = model.read("hook_logits").save()
    torch.testing.assert_close(nn_logits, ref, atol=ATOL, rtol=0)
    assert torch.equal(model.forward(batch), plain), "hooks must be removed after the block"


def _steered_generation(model: MLLM, arch: str, batch: Any, new: int, steer: Callable[..., torch.Tensor],
                        steps: Any, wanted: set[int]) -> tuple[Any, Any, list[int]]:
    """(wrapper generation, plain-torch-hook HF generation, steps the wrapper hook saw) for one step choice."""
    seen: list[int] = []

    def steer_logged(x: torch.Tensor, ctx: Any) -> torch.Tensor:
        seen.append(ctx.step)
        return steer(x, ctx)

    with model.hooks([("ln_final.hook_out", steer_logged)], steps=steps) as handle:
        got = model.generate(batch, new, min_new_tokens=new, return_logits=True)
    assert not handle.active
    # reference: a plain torch hook on the final norm, counting top-level forwards itself
    state = {"step": -1}

    def count(_m: torch.nn.Module, _a: Any) -> None:
        state["step"] += 1

    def edit(_m: torch.nn.Module, _a: Any, out: torch.Tensor) -> torch.Tensor | None:
        return steer(out, None) if state["step"] in wanted else None

    h1 = model.hf.register_forward_pre_hook(count)
    h2 = model.hf.get_submodule(DECODER[arch]).norm.register_forward_hook(edit)
    try:
        with torch.no_grad():
            ref = model.hf.generate(**batch.inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id, output_logits=True,
                                    return_dict_in_generate=True)
    finally:
        h1.remove()
        h2.remove()
    return got, ref, seen


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_generation_step_intervention_equals_torch_hook(models: Callable[..., MLLM], arch: str) -> None:
    """Steering at chosen steps (0 = prefill, t = t-th decode step) == a torch hook counting forwards itself."""
    model = models(arch)
    batch = image_batch(model)
    new = 4
    u = _shift(model.d_model, 1)

    def steer(x: torch.Tensor, _ctx: Any) -> torch.Tensor:  # MoRAS-style interpolation at the last position
        x = x.clone()
        x[:, -1] = x[:, -1] + 0.5 * (u - x[:, -1])
        return x

    plain = model.generate(batch, new, min_new_tokens=new, return_logits=True)
    assert plain.logits is not None and plain.logits.shape[:2] == (1, new)
    for steps, wanted in (("prefill", {0}), ([1, 2], {1, 2}), ("decode", {1, 2, 3})):
        got, ref, seen = _steered_generation(model, arch, batch, new, steer, steps, wanted)
        assert seen == sorted(wanted), steps
        assert got.logits is not None
        assert torch.equal(got.sequences, ref.sequences), steps
        torch.testing.assert_close(got.logits, torch.stack(list(ref.logits), dim=1), atol=ATOL, rtol=0)
        changed = (got.logits - plain.logits).abs().amax(dim=(0, 2)) > 1e-4
        assert changed[min(wanted)], f"{steps}: the first steered step must change its logits"
        if 0 not in wanted:  # the prefill was not touched
            torch.testing.assert_close(got.logits[:, 0], plain.logits[:, 0], atol=0, rtol=0)
