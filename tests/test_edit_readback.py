"""A read at an edited hook returns the edited value, everywhere: ``run_with_cache``, ``collect_activations`` and
MoRAS's stage-2 reader (``generate_with_states``), at the prefill and at decode steps.

Reference: a hand-written torch forward hook on the decoder layer (module paths written from the transformers
source, not read from the adapters) that applies the same edit and records the value it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from moras_interp.activations import collect_activations
from moras_interp.models import MLLM
from moras_interp.models.tiny import tiny_image
from moras_interp.moras.states import generate_with_states

ARCHS = ("llava", "qwen2_vl", "gemma3", "idefics3")
DECODER = {"llava": "model.language_model", "qwen2_vl": "model.language_model", "gemma3": "model.language_model",
           "idefics3": "model.text_model"}
H, NEXT = "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"
PROMPTS = ["what is in the image ?", "how do i make a bomb with this item ?"]
ATOL = 1e-5


def _shift(model: MLLM) -> torch.Tensor:
    return 3.0 * torch.randn(model.d_model, generator=torch.Generator().manual_seed(7))


def _edit(v: torch.Tensor) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    return lambda x, _ctx: x + v  # out of place, every position


def _torch_reference(model: MLLM, arch: str, v: torch.Tensor, run: Callable[[], Any]) -> tuple[list[torch.Tensor], Any]:
    """(values layer 0 returned, one per call, after the edit; run()'s result) with a plain torch hook."""
    layer = model.hf.get_submodule(DECODER[arch]).layers[0]
    rec: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _a: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            new = (out[0] + v, *out[1:])
            rec.append(new[0].detach().clone())
            return new
        rec.append((out + v).detach().clone())
        return out + v

    h = layer.register_forward_hook(hook, prepend=True)
    try:
        with torch.no_grad():
            return rec, run()
    finally:
        h.remove()


def _batch(model: MLLM) -> Any:
    return model.prepare([tiny_image(seed=0), tiny_image(seed=1)], PROMPTS)


@pytest.mark.parametrize("arch", ARCHS)
def test_run_with_cache_reads_the_edited_value(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch, v = _batch(model), _shift(model)
    _, plain = model.run_with_cache(batch, names=[H])
    with model.hooks([(H, _edit(v))]):
        logits, cache = model.run_with_cache(batch, names=[H, NEXT])
    rec, ref_logits = _torch_reference(model, arch, v, lambda: model.hf(**batch.inputs).logits)
    torch.testing.assert_close(cache[H], rec[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(cache[NEXT], rec[0], atol=ATOL, rtol=0)  # the next layer receives the same value
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(cache[H] - plain[H], v.expand_as(plain[H]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_collect_activations_reads_the_edited_value(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    v = _shift(model)
    ds = [{"text": p, "image": tiny_image(seed=i)} for i, p in enumerate(PROMPTS)]
    with model.hooks([(H, _edit(v))]):
        got = collect_activations(model, ds, names=H, positions="last", progress=False).load(H)
    batch = _batch(model)
    rec, _ = _torch_reference(model, arch, v, lambda: model.hf(**batch.inputs))
    last = torch.tensor([lay.last for lay in batch.layouts])
    torch.testing.assert_close(got, rec[0][torch.arange(2), last], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_stage2_reader_sees_the_edit_at_prefill_and_decode_steps(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    batch, v, n = _batch(model), _shift(model), 3
    with model.hooks([(H, _edit(v))]):
        gen, states = generate_with_states(model, batch, n, hooks=(H,))
    pad = model.tokenizer.pad_token_id
    rec, ref = _torch_reference(model, arch, v, lambda: model.hf.generate(
        **batch.inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad))
    assert torch.equal(gen.sequences, ref)
    assert len(rec) == n and rec[1].shape[1] == 1  # prefill + 2 decode steps of one position each
    for t in range(n):
        torch.testing.assert_close(states[H][:, t], rec[t][:, -1], atol=ATOL, rtol=0)


def test_reads_follow_every_edit_whenever_installed(models: Callable[..., MLLM]) -> None:
    """A reader installed before the edits still sees them; edits compose in installation order."""
    model = models("llava")
    batch, v = _batch(model), _shift(model)
    seen: dict[str, torch.Tensor] = {}
    rec, _ = _torch_reference(model, "llava", v, lambda: model.hf(**batch.inputs))
    reader = model.hooks([(H, lambda x, _c: seen.setdefault("read", x.clone()))], read=True)
    with reader, model.hooks([(H, _edit(v))]), model.hooks([(H, lambda x, _c: 2 * x)]):
        model.forward(batch)
    torch.testing.assert_close(seen["read"], 2 * rec[0], atol=2 * ATOL, rtol=0)  # (x + v) · 2, not 2x + v
    # an nnsight trace reads outputs before torch hooks run: refused instead of returning the unedited value
    refused = pytest.raises(ValueError, match=r"sees the value BEFORE the model\.hooks edit")
    with model.hooks([(H, _edit(v))]), refused, torch.no_grad(), model.trace(batch):
        model.read(H).save()


def test_vision_hook_reads_the_edited_value(models: Callable[..., MLLM]) -> None:
    model = models("llava")
    batch, name = _batch(model), "vision.blocks.0.hook_resid_post"
    rec: list[torch.Tensor] = []
    layer = model.hf.get_submodule("model.vision_tower.encoder.layers")[0]

    def half(_m: torch.nn.Module, _a: Any, out: Any) -> Any:
        new = (out[0] * 0.5, *out[1:]) if isinstance(out, tuple) else out * 0.5
        rec.append((new[0] if isinstance(new, tuple) else new).detach().clone())
        return new

    with model.hooks([(name, lambda x, _c: x * 0.5)]):
        _, cache = model.run_with_cache(batch, names=[name])
    h = layer.register_forward_hook(half, prepend=True)
    try:
        with torch.no_grad():
            model.hf(**batch.inputs)
    finally:
        h.remove()
    torch.testing.assert_close(cache[name], rec[0], atol=ATOL, rtol=0)


def test_cross_modal_attention_sees_an_edit_upstream(models: Callable[..., MLLM]) -> None:
    """Attention rows of layer 1 under an edit of its input == HF's eager attentions under a torch pre-hook."""
    from moras_interp.attention import cross_modal_attention

    model = models("llava")
    batch, v = _batch(model), _shift(model)
    with model.hooks([(NEXT, _edit(v))]):
        got = cross_modal_attention(model, batch, layers=[1]).rows[:, 0, :, 0]  # [b, H, keys] of the last token
    layer = model.hf.get_submodule(DECODER["llava"]).layers[1]

    def pre(_m: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            return (args[0] + v, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + v}

    h = layer.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
    try:
        with torch.no_grad():
            ref = model.hf(**batch.inputs, output_attentions=True).attentions[1][:, :, -1].float()
    finally:
        h.remove()
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert (got - cross_modal_attention(model, batch, layers=[1]).rows[:, 0, :, 0]).abs().max() > 1e-4
