"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower + MLP projector + Llama/Vicuna.

Image tokens: one contiguous run of ``image_token_id`` per image, projector rows in raster order over a
``g×g`` patch grid (``g = image_size / patch_size``; 24×24 at 336 px). With
``vision_feature_select_strategy="full"`` the CLS feature comes first and covers no patch.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from moras_interp.models.adapters.base import Adapter, GridSpec, ImageSpec
from moras_interp.models.adapters.geometry import clip_pipeline_boxes


class LlavaAdapter(Adapter):
    name = "llava"
    hf_classes = ("LlavaForConditionalGeneration",)
    example = "llava-hf/llava-1.5-7b-hf"
    vision_shape = "[b*img, 1+patches, d_v]"  # CLS first
    projector_shape = "[b*img, patches, d]"

    def image_specs(self, enc: dict[str, Any], images: list[list[Image.Image]]) -> list[list[ImageSpec]]:
        vc = self.config.vision_config
        g = int(vc.image_size) // int(vc.patch_size)
        full = getattr(self.config, "vision_feature_select_strategy", "default") == "full"
        out: list[list[ImageSpec]] = []
        for ims in images:
            specs = []
            for im in ims:
                boxes = clip_pipeline_boxes(self.processor.image_processor, im.width, im.height, g, g)
                first = 1 if full else 0
                grid = GridSpec("image", g, g, boxes, torch.arange(first, first + g * g))
                sep = torch.tensor([0]) if full else torch.zeros(0, dtype=torch.long)
                specs.append(ImageSpec(g * g + first, [grid], sep))
            out.append(specs)
        return out
