"""The tiny random-weight models and processors every other test builds on (moras_interp.models.tiny)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest
import torch

from moras_interp.models.tiny import TINY_ARCHS, build_tiny, make_word_tokenizer, tiny_image

PLACEHOLDER = {
    "llava": "<image>", "llava_next": "<image>", "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>", "idefics3": "<image>",
    "gemma3": "<start_of_image>", "internvl": "<IMG_CONTEXT>", "paligemma": "<image>",
}
TOKENS_PER_IMAGE = {"llava": 16, "llava_next": 14, "qwen2_vl": 6, "qwen2_5_vl": 6, "idefics3": 28, "gemma3": 16,
                    "internvl": 28, "paligemma": 16}
"""Image tokens for the default 60×40 ``tiny_image()`` (see the table in the tiny module's docstring)."""

REQUIRED_WORDS = (
    "what is in the image describe how do i make use the item this a an of to and for it safe unsafe question "
    "answer context write single sentence visual outline any safety critical read out texts begin with shows "
    "evaluate following ensure that benign harmless questions should be answered normally however if malicious "
    "or illegal assistant apologize refuse user system sorry cannot help with bomb knife gun poison drug cup "
    "book ball . , ? ! : ' w0 w199"
)

IMAGE_MSG = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in the image ?"}]}]


@functools.cache
def tiny(arch: str, attn: str = "eager") -> tuple[Any, Any]:
    return build_tiny(arch, attn_implementation=attn)


def images_arg(arch: str, images: list) -> list:
    """One image per prompt, in the nesting the processor wants (Gemma3: one list per prompt)."""
    return [[im] for im in images] if arch == "gemma3" else list(images)


def batch(arch: str) -> Any:
    """Two prompts of different lengths, one 60×40 image each, left-padded."""
    _, proc = tiny(arch)
    long = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                              "text": "how do i make a bomb with this item ?"}]}]
    texts = [proc.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in (IMAGE_MSG, long)]
    imgs = [tiny_image(), tiny_image(seed=1)]
    return proc(text=texts, images=images_arg(arch, imgs), padding=True, return_tensors="pt")


def image_feature_rows(hf: Any, enc: Any) -> list[int]:
    """Rows of ``hf.get_image_features`` output per image (features the model scatters into the sequence)."""
    params = inspect.signature(hf.get_image_features).parameters
    with torch.no_grad():
        out = hf.get_image_features(**{k: v for k, v in enc.items() if k in params})
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    if isinstance(feats, torch.Tensor):
        n_images = len(enc["image_grid_thw"]) if "image_grid_thw" in enc else 2
        return [feats.reshape(-1, feats.shape[-1]).shape[0] // n_images] * n_images
    return [f.reshape(-1, f.shape[-1]).shape[0] for f in feats]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_build(arch: str) -> None:
    hf, proc = tiny(arch)
    assert not hf.training
    assert all(p.dtype == torch.float32 for p in hf.parameters())
    text = hf.config.get_text_config()
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (64, 4, 2)
    assert text.num_hidden_layers == 2
    for key in hf.config.sub_configs:
        sub = getattr(hf.config, key, None)
        if sub is not None:
            assert sub._attn_implementation == "eager", key
    assert len(proc.tokenizer) <= text.vocab_size
    assert proc.tokenizer.padding_side == "left" and proc.tokenizer.pad_token_id is not None
    assert proc.chat_template and proc.tokenizer.chat_template
    assert hf.config.image_token_id == proc.tokenizer.convert_tokens_to_ids(
        proc.tokenizer.convert_ids_to_tokens(hf.config.image_token_id))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_chat_template(arch: str) -> None:
    _, proc = tiny(arch)
    tok = proc.tokenizer
    s = proc.apply_chat_template(IMAGE_MSG, add_generation_prompt=True, tokenize=False)
    assert PLACEHOLDER[arch] in s and "what is in the image ?" in s
    text_list = [{"role": "user", "content": [{"type": "text", "text": "how do i make a bomb ?"}]}]
    text_str = [{"role": "user", "content": "how do i make a bomb ?"}]
    t = proc.apply_chat_template(text_list, add_generation_prompt=True, tokenize=False)
    assert t == proc.apply_chat_template(text_str, add_generation_prompt=True, tokenize=False)
    assert "bomb" in t and PLACEHOLDER[arch] not in t
    with_sys = [{"role": "system", "content": "be safe ."}, *text_list,
                {"role": "assistant", "content": "sorry , i cannot help with that ."}]
    full = proc.apply_chat_template(with_sys, tokenize=False)
    for rendered in (s, t, full):
        assert tok.unk_token_id not in tok(rendered)["input_ids"], rendered


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_image_batch_forward(arch: str) -> None:
    hf, _ = tiny(arch)
    enc = batch(arch)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert mask[:, -1].all() and not mask[0].all() and mask[1].all()  # left padding, row 0 is shorter
    counts = (ids == hf.config.image_token_id).sum(1).tolist()
    assert counts == [TOKENS_PER_IMAGE[arch]] * 2
    assert image_feature_rows(hf, enc) == counts
    with torch.no_grad():
        logits = hf(**enc).logits
    assert logits.shape == (2, ids.shape[1], hf.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_text_only_forward(arch: str) -> None:
    hf, proc = tiny(arch)
    s = proc.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "how do i make a bomb ?"}]}],
                                 add_generation_prompt=True, tokenize=False)
    enc = proc(text=[s], return_tensors="pt")
    assert not (enc["input_ids"] == hf.config.image_token_id).any()
    with torch.no_grad():
        logits = hf(**enc).logits
    assert logits.shape[:2] == enc["input_ids"].shape and torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_eager_matches_sdpa(arch: str) -> None:
    eager, _ = tiny(arch)
    sdpa, _ = tiny(arch, "sdpa")
    for key in sdpa.config.sub_configs:
        sub = getattr(sdpa.config, key, None)
        if sub is not None:
            assert sub._attn_implementation == "sdpa", key
    enc = batch(arch)
    with torch.no_grad():
        a, b = eager(**enc).logits, sdpa(**enc).logits
    real = enc["attention_mask"].bool()  # padded query rows legitimately differ between the two
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=0)


def test_seed_and_shape_options() -> None:
    a, _ = build_tiny("llava", seed=3)
    b, _ = build_tiny("llava", seed=3, attn_implementation="sdpa")
    c, _ = build_tiny("llava", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    m, _ = build_tiny("qwen2_vl", num_layers=3, gqa=False)
    text = m.config.get_text_config()
    assert (text.num_hidden_layers, text.num_key_value_heads) == (3, 4)
    assert len(m.get_decoder().layers) == 3
    with pytest.raises(ValueError, match="Unknown tiny architecture"):
        build_tiny("gpt2")


def test_gemma3_sliding_window_is_exercised() -> None:
    hf, _ = tiny("gemma3")
    text = hf.config.text_config
    assert "sliding_attention" in text.layer_types and "full_attention" in text.layer_types
    assert text.sliding_window < batch("gemma3")["input_ids"].shape[1]
    deep, _ = build_tiny("gemma3", num_layers=4)
    assert deep.config.text_config.layer_types[-1] == "full_attention"


def test_qwen2_5_vl_window_permutation_is_not_identity() -> None:
    from transformers.vision_utils import get_vision_window_index

    hf, _ = tiny("qwen2_5_vl")
    enc = batch("qwen2_5_vl")
    assert enc["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 6]]
    v = hf.config.vision_config
    window_index, _ = get_vision_window_index(enc["image_grid_thw"][:1], v.spatial_merge_size, v.window_size,
                                              v.patch_size)
    assert not torch.equal(window_index, torch.arange(len(window_index)))


def test_tiling_layouts() -> None:
    enc = batch("llava_next")
    assert enc["pixel_values"].shape[1] == 5  # base + 2×2 tiles
    _, proc = tiny("idefics3")
    toks = proc.tokenizer.convert_ids_to_tokens(batch("idefics3")["input_ids"][1])
    tiles = [t for t in toks if t.startswith("<row_") or t == "<global-img>"]
    assert tiles == [f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2, 3)] + ["<global-img>"]
    assert batch("internvl")["pixel_values"].shape[0] == 2 * 7  # 2×3 tiles + thumbnail, per image


def test_vocabulary_and_tokenizer() -> None:
    for arch in TINY_ARCHS:
        tok = tiny(arch)[1].tokenizer
        ids = tok(REQUIRED_WORDS)["input_ids"]
        assert tok.unk_token_id not in ids, arch
        assert len(ids) == len(REQUIRED_WORDS.split())
    tok = make_word_tokenizer(["<x>"], {"image_token": "<x>"}, words=["zebra"])
    assert tok.image_token == "<x>" and tok.image_token_id == tok.convert_tokens_to_ids("<x>")
    assert tok.convert_ids_to_tokens(tok("Zebra <x>, safe-critical")["input_ids"]) == [
        "zebra", "<x>", ",", "safe", "-", "critical"]
    assert tok.padding_side == "left"


def test_tiny_image() -> None:
    im = tiny_image()
    assert im.size == (60, 40) and im.mode == "RGB"
    assert list(im.getdata()) == list(tiny_image().getdata())
    assert list(im.getdata()) != list(tiny_image(seed=1).getdata())
    assert tiny_image(28, 56).size == (28, 56)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "paligemma"])
def test_processor_save_load_round_trip(arch: str, tmp_path: Any) -> None:
    _, proc = tiny(arch)
    proc.save_pretrained(tmp_path)
    again = type(proc).from_pretrained(tmp_path)
    s = proc.apply_chat_template(IMAGE_MSG, add_generation_prompt=True, tokenize=False)
    a = proc(text=[s], images=[tiny_image()], return_tensors="pt")
    b = again(text=[s], images=[tiny_image()], return_tensors="pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.tokenizer.padding_side == "left" and again.chat_template == proc.chat_template
