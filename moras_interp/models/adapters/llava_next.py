"""LLaVA-NeXT / LLaVA-1.6 (``LlavaNextForConditionalGeneration``): CLIP tower on anyres tiles + Llama/Mistral.

Image tokens of one image, in sequence order (``pack_image_features`` with ``spatial_unpad``):

1. the **base** image: the whole image squashed to one ``tile × tile`` crop, a ``g × g`` patch grid
   (``g = image_size / patch_size``), raster order;
2. the **hires** part: the image is resized (aspect kept) into the best ``nph × npw``-tile canvas of
   ``image_grid_pinpoints`` and centre-padded; the ``(nph·g) × (npw·g)`` feature canvas is then cropped
   back ("unpadded", in feature cells) to ``R × C`` and each of its ``R`` rows is followed by one
   ``image_newline`` token: ``R·(C+1)`` tokens. The newline tokens hold ``model.image_newline``, cover no
   pixels, and are the image's ``separators``.

The unpadding works in whole feature cells with HF's own rounding, so the hires grid can miss a thin
band of the image next to the padding (the base grid always covers the whole image).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from moras_interp.models.adapters.base import Adapter, GridSpec, ImageSpec, raster_boxes, to_original


class LlavaNextAdapter(Adapter):
    name = "llava_next"
    hf_classes = ("LlavaNextForConditionalGeneration",)
    example = "llava-hf/llava-v1.6-mistral-7b-hf"
    vision_shape = "[n_crops, 1+patches, d_v]"  # base + tiles of every image; CLS first
    projector_shape = "[n_crops, patches, d]"

    def image_specs(self, enc: dict[str, Any], images: list[list[Image.Image]]) -> list[list[ImageSpec]]:
        if getattr(self.config, "vision_feature_select_strategy", "default") != "default":
            raise ValueError("llava_next: only vision_feature_select_strategy='default' (CLS dropped) is mapped "
                             "to a token layout; HF's anyres packing assumes it too.")
        sizes = enc["image_sizes"].tolist()  # (height, width) of each ORIGINAL image, flat over the batch
        out: list[list[ImageSpec]] = []
        k = 0
        for ims in images:
            specs = []
            for _ in ims:
                h, w = (int(v) for v in sizes[k])
                k += 1
                specs.append(self.anyres_spec(w, h))
            out.append(specs)
        return out

    def anyres_spec(self, width: int, height: int) -> ImageSpec:
        """The base grid, hires grid and newline separators of one ``width × height`` image."""
        from transformers.models.llava_next.modeling_llava_next import (
            get_anyres_image_grid_shape,
            unpad_image,
        )

        vc = self.config.vision_config
        tile = int(vc.image_size)
        g = tile // int(vc.patch_size)
        cell = tile / g  # canvas pixels per feature cell
        base = GridSpec("base", g, g, raster_boxes(g, g, width / g, height / g).to(torch.float32), torch.arange(g * g))
        nph, npw = get_anyres_image_grid_shape((height, width), self.config.image_grid_pinpoints, tile)
        canvas_h, canvas_w = nph * tile, npw * tile
        # processor: resize keeping aspect (ceil on the short side), then centre-pad to the canvas
        if canvas_w / width < canvas_h / height:
            new_w, new_h = canvas_w, min(math.ceil(height * canvas_w / width), canvas_h)
        else:
            new_w, new_h = min(math.ceil(width * canvas_h / height), canvas_w), canvas_h
        paste_x, paste_y = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
        # model: unpad the feature canvas with HF's own function, applied to cell indices
        fh, fw = nph * g, npw * g
        kept = unpad_image(torch.arange(fh * fw).view(1, fh, fw), (height, width))[0]
        rows, cols = int(kept.shape[0]), int(kept.shape[1])
        r0, c0 = int(kept[0, 0]) // fw, int(kept[0, 0]) % fw
        boxes = raster_boxes(rows, cols, cell, cell, c0 * cell, r0 * cell)
        boxes = to_original(boxes, scale_x=new_w / width, scale_y=new_h / height, shift_x=-paste_x,
                            shift_y=-paste_y, width=width, height=height)
        r = torch.arange(rows).repeat_interleave(cols)
        c = torch.arange(cols).repeat(rows)
        hires = GridSpec("hires", rows, cols, boxes, g * g + r * (cols + 1) + c)
        newlines = g * g + torch.arange(rows) * (cols + 1) + cols
        return ImageSpec(g * g + rows * (cols + 1), [base, hires], newlines)
