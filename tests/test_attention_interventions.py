"""Every attention intervention against a hand-written torch reference (tiny LLaVA, left-padded batch of 2).

References: a bias on image keys == an additive 4D attention mask given to HF; head knock-out == zeroing the
heads' slices of ``o_proj``'s input with a pre-hook; scale / PAI / top-K masking == a hand-written eager
attention (patched in for transformers' own ``eager_attention_forward``) that edits the probabilities
AFTER the softmax (scale, top-K) or the last row's logits (PAI).
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from moras_interp.attention import (
    BiasImageKeys,
    KnockoutHeads,
    MaskTopImageTokens,
    PAIAmplify,
    ScaleImageAttention,
    attention_edits,
    cross_modal_attention,
)
from moras_interp.models.loading import load_model
from moras_interp.models.tiny import build_tiny, tiny_image

PROMPTS = ["describe this image", "what is the small thing in the picture here"]
ATOL = 2e-5


@pytest.fixture(scope="module")
def setup():
    """(wrapped model, batch, image-key mask [b, seq], an unwrapped eager HF copy with the same weights).

    References run on the unwrapped copy: nnsight's ``.source`` (used by cross_modal_attention) recompiles
    attention forwards, which would hide a monkeypatched ``eager_attention_forward`` from the wrapped model.
    """
    hf, proc = build_tiny("llava", attn_implementation="eager", seed=7)
    ref, _ = build_tiny("llava", attn_implementation="eager", seed=7)
    model = load_model(hf, processor=proc, attn_implementation=None, validate=False)
    batch = model.prepare(images=[tiny_image(60, 40, seed=0), tiny_image(44, 52, seed=1)], prompts=PROMPTS)
    img = batch.input_ids == hf.config.image_token_id  # [b, seq], independent of the layouts
    return model, batch, img, ref


def _logits(model, batch, **kw) -> torch.Tensor:
    hf = model.hf if hasattr(model, "hf") else model
    with torch.no_grad():
        return hf(**{**batch.inputs, **kw}).logits


def _real(batch, x: torch.Tensor) -> torch.Tensor:
    return x[batch.inputs["attention_mask"].bool()]  # compare on real (non-padding) positions


def _patched_eager(monkeypatch, ref, edit):
    """Replace transformers' eager attention by a hand-written one with ``edit["logits"|"probs"](layer, x)``."""
    mod = sys.modules[type(ref.model.language_model.layers[0].self_attn).__module__]

    def ref(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        n_rep = query.shape[1] // key.shape[1]
        k = key[:, :, None].expand(-1, -1, n_rep, -1, -1).reshape(query.shape[0], -1, *key.shape[2:])
        v = value[:, :, None].expand(-1, -1, n_rep, -1, -1).reshape(query.shape[0], -1, *value.shape[2:])
        z = query @ k.transpose(2, 3) * scaling
        if attention_mask is not None:
            z = z + attention_mask[:, :, :, : k.shape[2]]
        z = edit.get("logits", lambda l, z: z)(module.layer_idx, z)
        p = torch.softmax(z.float(), dim=-1)
        p = edit.get("probs", lambda l, p: p)(module.layer_idx, p)
        return (p @ v).transpose(1, 2).contiguous(), p

    monkeypatch.setattr(mod, "eager_attention_forward", ref)


def _image_cols(img: torch.Tensor, k_len: int) -> torch.Tensor:
    out = torch.zeros(img.shape[0], k_len, dtype=torch.bool)
    out[:, : min(k_len, img.shape[1])] = img[:, :k_len]
    return out


def test_bias_equals_additive_4d_mask(setup) -> None:
    model, batch, img, ref = setup
    heads, bias = [0, 2], 1.5
    with attention_edits(model, [BiasImageKeys("blocks.*.attn.hook_pattern", heads=heads, bias=bias)],
                         layouts=batch.layouts):
        got = _logits(model, batch)
    am = batch.inputs["attention_mask"].bool()
    s = am.shape[1]
    n_heads = model.cfg.num_attention_heads
    allowed = torch.ones(s, s).tril().bool()[None] & am[:, None, :]  # [b, q, k]
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None].repeat(1, n_heads, 1, 1)
    hsel = torch.zeros(n_heads, dtype=torch.bool)
    hsel[heads] = True
    mask = mask + bias * (hsel[None, :, None, None] & img[:, None, None, :])
    want = _logits(ref, batch, attention_mask=mask)
    plain = _logits(model, batch)
    torch.testing.assert_close(_real(batch, got), _real(batch, want), atol=ATOL, rtol=0)
    assert (_real(batch, got) - _real(batch, plain)).abs().max() > 1e-3


def test_knockout_equals_o_proj_prehook(setup) -> None:
    model, batch, _, ref = setup
    layer, heads = 1, [1, 2]
    with attention_edits(model, [KnockoutHeads(f"blocks.{layer}.attn.hook_pattern", heads=heads)],
                         layouts=batch.layouts):
        got = _logits(model, batch)
    attn = ref.model.language_model.layers[layer].self_attn
    hd = attn.head_dim

    def zero(module, args):
        x = args[0].clone()
        for h in heads:
            x[..., h * hd:(h + 1) * hd] = 0
        return (x,)

    handle = attn.o_proj.register_forward_pre_hook(zero)
    try:
        want = _logits(ref, batch)
    finally:
        handle.remove()
    torch.testing.assert_close(_real(batch, got), _real(batch, want), atol=ATOL, rtol=0)
    assert (_real(batch, got) - _real(batch, _logits(model, batch))).abs().max() > 1e-3


def _scale_probs(img, layers, heads, factor):
    def probs(layer, p):
        if layer not in layers:
            return p
        p = p.clone()
        cols = _image_cols(img, p.shape[-1])[:, None, None, :] & torch.isin(torch.arange(p.shape[1]),
                                                                             torch.tensor(heads))[None, :, None, None]
        p = torch.where(cols, p * factor, p)
        return p / p.sum(-1, keepdim=True)
    return probs


def _topk_probs(img, heads, fraction):
    def probs(layer, p):
        p = p.clone()
        for b in range(p.shape[0]):
            cols = _image_cols(img, p.shape[-1])[b].nonzero().flatten()
            k = math.ceil(len(cols) * fraction)
            for h in heads:
                for q in range(p.shape[2]):
                    top = cols[torch.argsort(p[b, h, q, cols], descending=True)[:k]]
                    p[b, h, q, top] = 0.0
        return p / p.sum(-1, keepdim=True)
    return probs


def _pai_logits(img, heads, alpha):
    def logits(layer, z):
        z = z.clone()
        cols = _image_cols(img, z.shape[-1])
        for b in range(z.shape[0]):
            c = cols[b].nonzero().flatten()
            for h in heads:
                z[b, h, -1, c] = z[b, h, -1, c] + alpha * z[b, h, -1, c].abs()  # last query row only
        return z
    return logits


CASES = {
    "scale": (lambda: ScaleImageAttention("blocks.*.attn.hook_pattern", heads=[1, 3], factor=3.0),
              lambda img: {"probs": _scale_probs(img, {0, 1}, [1, 3], 3.0)}),
    "scale_zero": (lambda: ScaleImageAttention("blocks.0.attn.hook_pattern", heads=[0], factor=0.0),
                   lambda img: {"probs": _scale_probs(img, {0}, [0], 0.0)}),
    "top_k": (lambda: MaskTopImageTokens("blocks.1.attn.hook_pattern", heads=[0, 3], fraction=0.25),
              lambda img: {"probs": lambda l, p: _topk_probs(img, [0, 3], 0.25)(l, p) if l == 1 else p}),
    "pai": (lambda: PAIAmplify("blocks.*.attn.hook_pattern", heads=[2], alpha=0.8),
            lambda img: {"logits": _pai_logits(img, [2], 0.8)}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_edits_equal_hand_written_eager(setup, monkeypatch, case: str) -> None:
    model, batch, img, ref = setup
    make_edit, make_ref = CASES[case]
    plain = _logits(model, batch)
    with attention_edits(model, [make_edit()], layouts=batch.layouts):
        got = _logits(model, batch)
    _patched_eager(monkeypatch, ref, make_ref(img))
    want = _logits(ref, batch)
    torch.testing.assert_close(_real(batch, got), _real(batch, want), atol=ATOL, rtol=0)
    assert (_real(batch, got) - _real(batch, plain)).abs().max() > 1e-4


def test_edits_on_sdpa_model_every_generation_step(setup, monkeypatch) -> None:
    """sdpa model, generation with KV cache: image keys stay edited at every step; unedited layers use sdpa."""
    _, batch, img, ref = setup
    hf_s, proc = build_tiny("llava", attn_implementation="sdpa", seed=7)
    sdpa = load_model(hf_s, processor=proc, attn_implementation=None, validate=False)
    kw = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "output_logits": True,
          "return_dict_in_generate": True, "pad_token_id": proc.tokenizer.pad_token_id}
    edit = ScaleImageAttention("blocks.1.attn.hook_pattern", heads=[0, 1], factor=4.0)
    with torch.no_grad(), attention_edits(sdpa, [edit], layouts=batch.layouts):
        got = hf_s.generate(**batch.inputs, **kw)
    assert sdpa.attn_implementation == "sdpa"  # restored on exit
    _patched_eager(monkeypatch, ref, {"probs": _scale_probs(img, {1}, [0, 1], 4.0)})
    with torch.no_grad():
        want = ref.generate(**batch.inputs, **kw)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_cross_modal_attention_inside_edits_reports_edited_rows(setup, monkeypatch) -> None:
    model, batch, img, ref = setup
    edit = BiasImageKeys("blocks.1.attn.hook_pattern", heads=[1], bias=2.0)
    before = cross_modal_attention(model, batch, query="last")
    with attention_edits(model, [edit], layouts=batch.layouts):
        attn = cross_modal_attention(model, batch, query="last")

    def logits(layer, z):
        if layer != 1:
            return z
        return z + 2.0 * (_image_cols(img, z.shape[-1])[:, None, None, :] & (torch.arange(z.shape[1]) == 1)[
            None, :, None, None])

    _patched_eager(monkeypatch, ref, {"logits": logits})
    with torch.no_grad():
        want = torch.stack(ref(**batch.inputs, output_attentions=True).attentions, 1)
    for e, lay in enumerate(batch.layouts):
        torch.testing.assert_close(attn.rows[e, :, :, 0], want[e, :, :, lay.last].float(), atol=ATOL, rtol=0)
        assert attn.image_mass(e)[1, 1] > before.image_mass(e)[1, 1] + 1e-3  # the bias moved mass to the image


def test_edit_argument_errors(setup) -> None:
    model, batch, _, _ = setup
    edits = [KnockoutHeads("blocks.9.attn.hook_pattern")]
    with pytest.raises(KeyError, match="match no"), attention_edits(model, edits, layouts=batch.layouts):
        pass
    with pytest.raises(ValueError, match="fraction"):
        MaskTopImageTokens(fraction=0.0)
    with pytest.raises(ValueError, match="query"):
        BiasImageKeys(query="first")
    with pytest.raises(ValueError, match="factor"):
        ScaleImageAttention(factor=-1.0)
