"""LLaVA-1.5-shaped models with random weights for the benchmarks: the shapes and one builder.

:data:`FULL` is LLaVA-1.5-7B (Vicuna-7B: 32 layers × 32 heads × 4096 hidden, 11008 MLP, vocabulary 32064;
CLIP ViT-L/14-336: 24 layers, 1024 hidden, 4096 MLP, 16 heads, 336 px, i.e. 576 image tokens). The scaled
shapes are the CPU defaults of the individual scripts and are kept as they were, so that new results stay
comparable with the ones in ``bench/results/``. :func:`build_llava` builds the HF model (N(0, 0.02) weights,
``torch.manual_seed(0)``, sdpa attention) and a ``LlavaProcessor`` with the word-level tokenizer and vicuna-style
chat template of the tiny LLaVA in :mod:`moras_interp.models.tiny`; :func:`load_llava` wraps it as an
:class:`~moras_interp.MLLM`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

    from moras_interp import MLLM

PATCH = 14
"""CLIP ViT-L/14 patch size (every shape here)."""

VICUNA_ROLES = {"system": "", "user": "USER: ", "assistant": "ASSISTANT: "}
"""Turn prefixes of the LLaVA-1.5 (vicuna v1) conversation template."""


@dataclass(frozen=True)
class LlavaShape:
    """Sizes of a LLaVA-1.5-style model: a Llama text decoder and a CLIP vision tower.

    Field names (and their order) are those of the shape dicts that ``bench_attention`` and ``bench_collect``
    write into their JSON results (see :meth:`as_dict`).

    Attributes:
        hidden, layers, heads, intermediate: Llama hidden size, decoder layers, attention heads (as many
            key/value heads: no GQA, as in Vicuna-7B) and MLP size.
        vocab: Llama vocabulary size; raised to the tokenizer's size where smaller (``0``: the tokenizer's).
        v_hidden, v_layers, v_heads, v_intermediate: CLIP hidden size, layers, heads and MLP size.
        image: input image side in pixels (patch size 14, so ``(image / 14)²`` image tokens).
    """

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    v_hidden: int
    v_layers: int
    v_heads: int
    v_intermediate: int
    image: int

    def as_dict(self) -> dict[str, int]:
        """The shape as a plain dict (the ``"shape"`` entry of the benchmarks' JSON output)."""
        return asdict(self)

    def with_layers(self, layers: int | None) -> LlavaShape:
        """This shape with ``layers`` text decoder layers (unchanged where ``layers`` is None or 0)."""
        return replace(self, layers=layers) if layers else self


FULL = LlavaShape(hidden=4096, layers=32, heads=32, intermediate=11008, vocab=32064,
                  v_hidden=1024, v_layers=24, v_heads=16, v_intermediate=4096, image=336)
"""LLaVA-1.5-7B: Vicuna-7B + CLIP ViT-L/14-336 (576 image tokens), 7.06 B parameters."""

ATTENTION_CPU = LlavaShape(hidden=1024, layers=8, heads=32, intermediate=2816, vocab=2048,
                           v_hidden=256, v_layers=2, v_heads=4, v_intermediate=1024, image=336)
"""``bench_attention``'s CPU scale: 32 heads as in 7B (head_dim 32), 8 layers, 336 px (576 image tokens); the
vocabulary is scaled with the model so that the LM head stays ~2% of the forward's FLOPs as in 7B (the early
stop after the last attention must not look better than it would at full scale)."""

COLLECT_CPU = LlavaShape(hidden=384, layers=4, heads=6, intermediate=1024, vocab=32064,
                         v_hidden=192, v_layers=3, v_heads=3, v_intermediate=768, image=224)
"""``bench_collect``'s CPU scale (full 7B vocabulary, 224 px: 256 image tokens)."""

MORAS_TINY = LlavaShape(hidden=64, layers=2, heads=4, intermediate=128, vocab=0,
                        v_hidden=32, v_layers=1, v_heads=2, v_intermediate=64, image=56)
"""``bench_moras --models tiny``: a smoke-test size (16 image tokens, the tokenizer's vocabulary)."""

MORAS_SCALED = LlavaShape(hidden=512, layers=6, heads=8, intermediate=1376, vocab=0,
                          v_hidden=256, v_layers=3, v_heads=4, v_intermediate=1024, image=168)
"""``bench_moras --models scaled``: 144 image tokens, the tokenizer's vocabulary."""


def llava_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny LLaVA's word-level tokenizer (``<image>`` token, vicuna-style chat template, left padding).

    The same tokenizer as ``build_tiny("llava")[1].tokenizer``, without building the tiny model.
    """
    from moras_interp.models.tiny import chat_template, make_word_tokenizer

    template = chat_template(roles=VICUNA_ROLES, end=" ", image="<image>\n", generation="ASSISTANT:")
    return make_word_tokenizer(["<image>"], {"image_token": "<image>"}, chat_template=template)


def build_llava(shape: LlavaShape, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                *, seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A LLaVA-1.5-style HF model of ``shape`` with random N(0, 0.02) weights and its processor.

    The weights are created directly on ``device`` in ``dtype`` right after ``torch.manual_seed(seed)``
    (same shape and seed → same weights), with sdpa attention; the model is in ``eval()`` mode. The vision
    features come from the second-to-last CLIP layer with the CLS token dropped, as in LLaVA-1.5.

    Returns:
        ``(model, processor)``; wrap them with ``load_model(model, processor=processor, ...)`` or use
        :func:`load_llava`.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = llava_tokenizer()
    size = shape.image
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=shape.v_hidden, intermediate_size=shape.v_intermediate,
                                       num_hidden_layers=shape.v_layers, num_attention_heads=shape.v_heads,
                                       image_size=size, patch_size=PATCH, projection_dim=shape.v_hidden),
        text_config=LlamaConfig(vocab_size=max(shape.vocab, len(tok)), hidden_size=shape.hidden,
                                intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                                num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                                max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.02),
        image_token_index=tok.image_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id)
    ip = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=tok.chat_template)
    torch.manual_seed(seed)
    with torch.device(device):
        hf = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    hf.eval()
    return hf, proc


def wrap(hf: LlavaForConditionalGeneration, proc: LlavaProcessor) -> MLLM:
    """``hf`` and ``proc`` (from :func:`build_llava`) as an :class:`~moras_interp.MLLM` (sdpa, not validated)."""
    from moras_interp import load_model

    return load_model(hf, processor=proc, attn_implementation="sdpa", validate=False)


def load_llava(shape: LlavaShape, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> MLLM:
    """:func:`build_llava` wrapped as an :class:`~moras_interp.MLLM` (sdpa, not validated)."""
    return wrap(*build_llava(shape, device, dtype))
