"""cross_modal_attention against HF eager ``output_attentions=True`` on every tiny architecture with an adapter.

The reference model is a second, eager HF model built with the same seed (same weights); its full attention
matrices are sliced at our query rows. Covers left-padded batches of 2, GQA and plain MHA, Gemma3's
sliding-window layers, Qwen2-VL / 2.5-VL multimodal RoPE, eager and sdpa loading, layer/head subsets.
"""

from __future__ import annotations

import pytest
import torch

from moras_interp.attention import cross_modal_attention
from moras_interp.models.adapters import supported_architectures
from moras_interp.models.loading import load_model
from moras_interp.models.tiny import TINY_ARCHS, build_tiny, tiny_image

HF_CLASS = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
}
ARCHS = [a for a in TINY_ARCHS if HF_CLASS[a] in supported_architectures()]
PROMPTS = ["describe this image", "what is the small thing in the picture here"]
ATOL = 1e-5


def _pair(arch: str, impl: str, *, gqa: bool = True, num_layers: int = 2):
    """(wrapped model under test, eager HF reference with the same weights)."""
    hf, proc = build_tiny(arch, attn_implementation=impl, gqa=gqa, num_layers=num_layers, seed=3)
    ref, _ = build_tiny(arch, attn_implementation="eager", gqa=gqa, num_layers=num_layers, seed=3)
    return load_model(hf, processor=proc, attn_implementation=None, validate=False), ref


def _reference(ref: torch.nn.Module, batch) -> torch.Tensor:
    """float [b, L, H, q, k]: HF eager attention probabilities of every layer."""
    with torch.no_grad():
        out = ref(**batch.inputs, output_attentions=True)
    return torch.stack(out.attentions, dim=1).float()


def _check_rows(attn, ref_att: torch.Tensor) -> None:
    for e in range(attn.rows.shape[0]):
        v = attn.query_valid[e]
        q = attn.query_positions[e][v]
        want = ref_att[e][attn.layers][:, attn.heads][:, :, q]  # [L, H, r_valid, k]
        torch.testing.assert_close(attn.rows[e][:, :, v], want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_rows_equal_hf_eager_padded_batch(arch: str, impl: str) -> None:
    model, ref = _pair(arch, impl)
    assert model.attn_implementation == impl
    batch = model.prepare(images=[tiny_image(60, 40, seed=0), tiny_image(44, 52, seed=1)], prompts=PROMPTS)
    assert max(l.n_pad for l in batch.layouts) > 0, "the batch must be left-padded"
    attn = cross_modal_attention(model, batch, query="instruction")
    ref_att = _reference(ref, batch)
    assert attn.rows.shape[:3] == (2, ref_att.shape[1], ref_att.shape[2])
    assert attn.rows.shape[-1] == batch.input_ids.shape[1]
    assert bool(attn.query_valid.all()) is False  # the shorter instruction has padded (invalid) rows
    _check_rows(attn, ref_att)
    # rows over all keys sum to 1; image mass + text mass = 1; image mass equals the reference's
    torch.testing.assert_close(attn.rows.sum(-1), torch.ones(attn.rows.shape[:-1]), atol=1e-5, rtol=0)
    for e, lay in enumerate(batch.layouts):
        qv = attn.query_positions[e][attn.query_valid[e]]
        ref_img = ref_att[e][:, :, qv][..., lay.image_positions].sum(-1).mean(-1)
        ref_txt = ref_att[e][:, :, qv][..., lay.text_positions].sum(-1).mean(-1)
        torch.testing.assert_close(attn.image_mass(e), ref_img, atol=ATOL, rtol=0)
        torch.testing.assert_close(attn.image_mass(e) + attn.text_mass(e), torch.ones_like(ref_img), atol=1e-6,
                                   rtol=0)
        torch.testing.assert_close(ref_img + ref_txt, torch.ones_like(ref_img), atol=1e-5, rtol=0)


@pytest.mark.parametrize("gqa", [True, False])
def test_gqa_and_mha_last_query(gqa: bool) -> None:
    model, ref = _pair("llava", "sdpa", gqa=gqa)
    assert model.cfg.num_key_value_heads == (2 if gqa else 4) and model.cfg.num_attention_heads == 4
    batch = model.prepare(images=[tiny_image(), tiny_image(30, 70, seed=2)], prompts=PROMPTS)
    attn = cross_modal_attention(model, batch, query="last")
    ref_att = _reference(ref, batch)
    for e, lay in enumerate(batch.layouts):
        torch.testing.assert_close(attn.rows[e, :, :, 0], ref_att[e, :, :, lay.last], atol=ATOL, rtol=0)


def test_sdpa_single_example_without_mask() -> None:
    """Unpadded sdpa batches pass no mask at all (pure causal); rows must still be exact."""
    model, ref = _pair("llava", "sdpa")
    batch = model.prepare(images=[tiny_image()], prompts=["describe this image"])
    attn = cross_modal_attention(model, batch, query=torch.arange(batch.input_ids.shape[1]))
    ref_att = _reference(ref, batch)
    torch.testing.assert_close(attn.rows[0], ref_att[0], atol=ATOL, rtol=0)  # the full matrix, every row


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_gemma3_sliding_window_layers(impl: str) -> None:
    model, ref = _pair("gemma3", impl, num_layers=2)
    text_cfg = model.cfg
    assert text_cfg.layer_types[0] == "sliding_attention" and text_cfg.layer_types[1] == "full_attention"
    window = int(text_cfg.sliding_window)
    batch = model.prepare(images=[tiny_image(), tiny_image(44, 52, seed=1)], prompts=PROMPTS)
    attn = cross_modal_attention(model, batch, query="last")
    ref_att = _reference(ref, batch)
    for e, lay in enumerate(batch.layouts):
        torch.testing.assert_close(attn.rows[e, :, :, 0], ref_att[e, :, :, lay.last], atol=ATOL, rtol=0)
        old = torch.arange(lay.seq_len) <= lay.last - window  # outside the window of the last query
        assert old[lay.image_positions].any()
        assert (attn.rows[e, 0, :, 0][:, old] == 0).all()  # sliding layer: nothing beyond the window
        assert (attn.rows[e, 1, :, 0][:, lay.image_positions] > 0).all()  # global layer still sees the image


def test_qwen2_vl_mrope_positions_are_multimodal() -> None:
    """The exactness above is over M-RoPE: image tokens share temporal ids and differ in h/w ids."""
    model, ref = _pair("qwen2_vl", "sdpa")
    batch = model.prepare(images=[tiny_image(60, 40)], prompts=["describe this image"])
    seen: dict[str, torch.Tensor] = {}

    def grab(module, args, kwargs):  # the position ids the text decoder really receives
        seen["pos"] = kwargs["position_ids"]

    h = ref.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        ref_att = _reference(ref, batch)
    finally:
        h.remove()
    pos = seen["pos"][-3:, 0]  # [t/h/w, seq] (a leading text row may precede them)
    img = batch.layouts[0].image_positions
    assert len(set(pos[0, img].tolist())) == 1 and len(set(pos[1, img].tolist())) > 1
    assert len(set(pos[2, img].tolist())) > 1
    attn = cross_modal_attention(model, batch, query="instruction")
    _check_rows(attn, ref_att)


def test_layer_and_head_subsets() -> None:
    model, ref = _pair("llava", "eager", num_layers=3)
    batch = model.prepare(images=[tiny_image()], prompts=["describe this image"])
    attn = cross_modal_attention(model, batch, query=[batch.layouts[0].last, 3], layers=[-1, 0], heads=[3, 1])
    assert attn.layers == [2, 0] and attn.heads == [3, 1] and attn.rows.shape[1:4] == (2, 2, 2)
    _check_rows(attn, _reference(ref, batch))


def test_unsupported_attention_implementation_is_a_clear_error() -> None:
    model, _ = _pair("llava", "sdpa")
    batch = model.prepare(images=[tiny_image()], prompts=["describe this image"])
    model.cfg._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
            cross_modal_attention(model, batch)
    finally:
        model.cfg._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match=r"must lie in \[0,"):
        cross_modal_attention(model, batch, query=[batch.input_ids.shape[1]])
    with pytest.raises(ValueError, match="out of range"):
        cross_modal_attention(model, batch, layers=[5])
    with pytest.raises(ValueError, match="query="):
        cross_modal_attention(model, batch, query="first")
