"""Gemma3 and PaliGemma: SigLIP tower + linear projector + Gemma decoder.

Gemma3: ``mm_tokens_per_image`` soft tokens per image (a √n × √n grid after 4×4 average pooling; 16×16 at
896 px) between ``<start_of_image>``/``<end_of_image>``; the image is squashed to the processor size.
Gemma3 uses sandwich norms, so ``hook_attn_out``/``hook_mlp_out`` read ``post_attention_layernorm`` /
``post_feedforward_layernorm`` (what is actually added to the residual), and TransformerLens' ``ln2`` is
``pre_feedforward_layernorm`` (its input, ``hook_resid_mid``, is ``resid_pre + attn_out`` with the post-norm
already applied), as in TransformerLens' Gemma 2/3 blocks (``ln1_post``/``ln2_post`` there). Trap: ``processor.image_token_id``
is the begin-of-image token; the image-feature token is ``config.image_token_id``.
PaliGemma: ``image_seq_length`` tokens (a √n × √n grid) placed before BOS; squash resize.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from moras_interp.models.adapters.base import Adapter, GridSpec, ImageSpec
from moras_interp.models.adapters.geometry import clip_pipeline_boxes, square_side


def _square_grid_specs(adapter: Adapter, n: int, images: list[list[Image.Image]]) -> list[list[ImageSpec]]:
    g = square_side(n, f"{adapter.name} image tokens per image")
    ip = adapter.processor.image_processor
    return [[ImageSpec(n, [GridSpec("image", g, g, clip_pipeline_boxes(ip, im.width, im.height, g, g), torch.arange(n))])
             for im in ims] for ims in images]


class Gemma3Adapter(Adapter):
    name = "gemma3"
    hf_classes = ("Gemma3ForConditionalGeneration",)
    attn_out = ("post_attention_layernorm", None)
    mlp_out = ("post_feedforward_layernorm", None)
    ln2 = "pre_feedforward_layernorm"
    nested_images = True
    example = "google/gemma-3-4b-it"
    projector_shape = "[b*img, mm_tokens_per_image, d]"

    def image_specs(self, enc: dict[str, Any], images: list[list[Image.Image]]) -> list[list[ImageSpec]]:
        if getattr(self.processor.image_processor, "do_pan_and_scan", False):
            raise ValueError("Gemma3 pan-and-scan crops are not mapped to pixel boxes; set "
                             "processor.image_processor.do_pan_and_scan = False.")
        return _square_grid_specs(self, int(self.config.mm_tokens_per_image), images)


class PaliGemmaAdapter(Adapter):
    name = "paligemma"
    hf_classes = ("PaliGemmaForConditionalGeneration",)
    example = "google/paligemma2-3b-pt-224"

    def image_placeholder(self) -> str:
        return str(self.processor.image_token)

    def image_specs(self, enc: dict[str, Any], images: list[list[Image.Image]]) -> list[list[ImageSpec]]:
        return _square_grid_specs(self, int(self.processor.image_seq_length), images)
