"""Loading and bad inputs: clear errors, the real from_pretrained path, and the generated hook docs."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from moras_interp import load_model
from moras_interp.models import MLLM
from moras_interp.models.adapters import LlavaAdapter
from moras_interp.models.batch import build_layouts
from moras_interp.models.tiny import TINY_ARCHS, build_tiny, tiny_image

HF_CLASSES = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration", "Qwen2VLForConditionalGeneration",
              "Qwen2_5_VLForConditionalGeneration", "Idefics3ForConditionalGeneration",
              "Gemma3ForConditionalGeneration", "InternVLForConditionalGeneration",
              "PaliGemmaForConditionalGeneration")




def test_unknown_architecture_lists_supported_ones_and_how_to_add() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    _, proc = build_tiny("llava")
    text_only = LlamaForCausalLM(LlamaConfig(vocab_size=len(proc.tokenizer), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="LlamaForCausalLM") as err:
        load_model(text_only, processor=proc)
    msg = str(err.value)
    assert all(cls in msg for cls in HF_CLASSES), msg
    assert "moras_interp/models/adapters/" in msg and "adding_an_architecture" in msg


def test_already_built_model_needs_its_processor() -> None:
    hf, _ = build_tiny("llava")
    with pytest.raises(ValueError, match="processor=proc"):
        load_model(hf)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_image_token_mismatch(models: Callable[..., MLLM], arch: str) -> None:
    model = models(arch)
    placeholder = model.adapter.image_placeholder()
    # a placeholder of one's own on top of the one the chat template adds: 2 placeholders, 1 image
    with pytest.raises(ValueError, match="remove placeholders"):
        model.prepare([tiny_image()], [f"{placeholder} what is this ?"])
    # a placeholder but no image
    with pytest.raises(ValueError, match=re.escape("Images per prompt: [0]")):
        model.prepare(None, [f"{placeholder} what is this ?"])
    # more image entries than prompts
    with pytest.raises(ValueError, match="2 image entries for 1 prompts"):
        model.prepare([tiny_image(), tiny_image()], ["what is this ?"])
    # the sequence holds fewer image tokens than the image needs (e.g. a truncated or hand-edited input)
    batch = model.prepare([tiny_image()], ["what is this ?"])
    enc = dict(batch.inputs)
    ids = enc["input_ids"].clone()
    first = int((ids[0] == model.adapter.image_token_id).nonzero()[0, 0])
    ids[0, first] = model.tokenizer.pad_token_id
    enc["input_ids"] = ids
    n = batch.layouts[0].images[0].n_tokens
    with pytest.raises(ValueError, match=f"holds {n - 1} image tokens .* need {n}"):
        build_layouts(model.adapter, enc, batch.images, batch.prompts)


def test_sdpa_model_asked_for_attention_patterns(models: Callable[..., MLLM]) -> None:
    sdpa, eager = models("llava", "sdpa"), models("llava")
    assert sdpa.attn_implementation == "sdpa"
    batch = sdpa.prepare([tiny_image()], ["what is in the image ?"])
    for names in (["blocks.0.attn.hook_pattern"], "blocks.*.attn.hook_pattern", None):
        with pytest.raises(ValueError, match="attn_implementation='eager'"):
            sdpa.run_with_cache(batch, names)
    with pytest.raises(ValueError, match="attn_implementation='eager'"), sdpa.trace(batch):
        sdpa.read("blocks.1.attn.hook_pattern")
    # everything else works under sdpa and agrees with the eager model on real tokens
    lg_s, cache_s = sdpa.run_with_cache(batch, "blocks.*.hook_resid_post")
    lg_e, cache_e = eager.run_with_cache(batch, "blocks.*.hook_resid_post")
    torch.testing.assert_close(lg_s, lg_e, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache_s.stack(), cache_e.stack(), atol=1e-5, rtol=0)


def test_misspelt_hook_names_suggest_the_closest(models: Callable[..., MLLM]) -> None:
    model = models("qwen2_vl")
    batch = model.prepare([tiny_image()], ["what is in the image ?"])
    with pytest.raises(KeyError, match=re.escape("'blocks.0.hook_resid_post'")):
        model.run_with_cache(batch, ["blocks.0.hook_resid_pots"])
    with pytest.raises(KeyError, match=re.escape("'ln_final.hook_out'")):
        model.hook_point("ln_final.hook_ot")
    with pytest.raises(KeyError, match="matches no hook name"):
        model.run_with_cache(batch, "blocks.*.hook_resid_middle")
    with pytest.raises(KeyError, match=re.escape("model.hook_names()")):
        model.hooks([("blocks.9.hook_resid_post", lambda x, ctx: x)]).__enter__()


def test_load_time_validation_names_hook_module_and_expectation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LlavaAdapter, "attn_out", ("self_attn", 1))  # the attention weights, not its output
    hf, proc = build_tiny("llava")
    with pytest.raises(RuntimeError) as err:
        load_model(hf, processor=proc)
    msg = str(err.value)
    assert "'blocks.0.hook_attn_out'" in msg and "'model.language_model.layers.0.self_attn'" in msg
    assert "expected (1, " in msg and "adapters/llava.py" in msg


@pytest.mark.parametrize("arch", ["llava", "idefics3", "gemma3"])
def test_load_from_local_path_after_save_pretrained(models: Callable[..., MLLM], arch: str, tmp_path: Path) -> None:
    ref = models(arch)
    ref.hf.save_pretrained(tmp_path)
    ref.processor.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))
    model = load_model(str(tmp_path))  # AutoModelForImageTextToText + AutoProcessor, safetensors only
    assert type(model.hf) is type(ref.hf) and model.arch == ref.arch and model.hook_names() == ref.hook_names()
    assert model.attn_implementation == "eager"
    batch = model.prepare([tiny_image()], ["what is in the image ?"])
    names = ["vision.blocks.1.hook_resid_post", "projector.hook_out", "blocks.1.hook_resid_post"]
    lg, cache = model.run_with_cache(batch, names)
    with torch.no_grad():
        hf_logits = ref.hf(**ref.prepare([tiny_image()], ["what is in the image ?"]).inputs).logits
    torch.testing.assert_close(lg, hf_logits, atol=0, rtol=0)
    _, cache_ref = ref.run_with_cache(batch, names)
    for n in names:
        torch.testing.assert_close(cache[n], cache_ref[n], atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "internvl", "paligemma"])
def test_load_from_path_where_autoprocessor_cannot_build_uses_the_image_text_processor(
        models: Callable[..., MLLM], tmp_path: Path, arch: str) -> None:
    ref = models(arch)  # without torchvision AutoProcessor returns the bare tokenizer for these
    ref.hf.save_pretrained(tmp_path)
    ref.processor.save_pretrained(tmp_path)
    from transformers import AutoProcessor

    assert getattr(AutoProcessor.from_pretrained(tmp_path), "image_processor", None) is None
    model = load_model(str(tmp_path))  # falls back to moras_interp.models.processors
    assert type(model.processor).__name__ == type(ref.processor).__name__
    batch = model.prepare([tiny_image()], ["what is in the image ?"])
    torch.testing.assert_close(model.forward(batch), ref.forward(batch), atol=0, rtol=0)


def test_unbuildable_processor_is_a_clear_error(models: Callable[..., MLLM], tmp_path: Path) -> None:
    ref = models("qwen2_vl")
    ref.hf.save_pretrained(tmp_path)
    ref.processor.tokenizer.save_pretrained(tmp_path)  # no image processor files at all
    with pytest.raises((ValueError, OSError), match="processor"):
        load_model(str(tmp_path))


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises((OSError, ValueError), match="does-not-exist"):
        load_model(str(tmp_path / "does-not-exist"), local_files_only=True)


def test_docs_hook_table_is_generated_from_the_adapters() -> None:
    from moras_interp.models import hook_docs

    doc = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"
    text = hook_docs.render()
    assert doc.read_text(encoding="utf-8") == text, "run: python -m moras_interp.models.hook_docs docs/hooks.md"
    for arch in TINY_ARCHS:
        assert f"### {arch}\n" in text
    assert text.count("| `blocks.{l}.hook_resid_post` ×2 |") == len(TINY_ARCHS)
    assert "`model.text_model.layers.{l}` (output)" in text and "`model.visual.merger` (output)" in text
