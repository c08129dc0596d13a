"""Qwen2-VL and Qwen2.5-VL: dynamic-resolution ViT whose merger (2×2 patch merge) is the projector.

Image tokens: ``t·(h/m)·(w/m)`` per image (``image_grid_thw = (t, h, w)`` in 14-px patches, ``m`` =
spatial merge size), in raster order over the merged grid; each token covers ``m·patch`` resized pixels
and the resize (``smart_resize``) only scales, so boxes are an exact rescale. ``projector.hook_out`` is
``model.visual.merger`` output [n_tokens, d] without a batch axis; on Qwen2.5-VL its rows are in the
vision window order (the model applies ``argsort(window_index)`` afterwards), NOT raster order.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from moras_interp.models.adapters.base import Adapter, GridSpec, ImageSpec, raster_boxes, to_original


class Qwen2VLAdapter(Adapter):
    name = "qwen2_vl"
    hf_classes = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    vision_root = "model.visual"
    vision_layer_candidates = ("blocks",)
    projector = "model.visual.merger"
    example = "Qwen/Qwen2.5-VL-7B-Instruct"
    examples = {"Qwen2VLForConditionalGeneration": "Qwen/Qwen2-VL-7B-Instruct",
                "Qwen2_5_VLForConditionalGeneration": "Qwen/Qwen2.5-VL-7B-Instruct"}
    vision_shape = "[patches, d_v]"  # all images concatenated, no batch axis
    projector_shape = "[n_img_tokens, d]"

    def image_specs(self, enc: dict[str, Any], images: list[list[Image.Image]]) -> list[list[ImageSpec]]:
        thw = enc["image_grid_thw"].tolist()
        ip = self.processor.image_processor
        patch, merge = int(ip.patch_size), int(ip.merge_size)
        out: list[list[ImageSpec]] = []
        k = 0
        for ims in images:
            specs = []
            for im in ims:
                t, h, w = (int(x) for x in thw[k])
                k += 1
                rows, cols = h // merge, w // merge
                cell = float(patch * merge)
                boxes = raster_boxes(rows, cols, cell, cell)
                boxes = to_original(boxes, scale_x=w * patch / im.width, scale_y=h * patch / im.height,
                                    width=im.width, height=im.height)
                n = rows * cols
                grids = [GridSpec("image" if t == 1 else f"frame {f}", rows, cols, boxes, torch.arange(f * n, (f + 1) * n))
                         for f in range(t)]
                specs.append(ImageSpec(t * n, grids))
            out.append(specs)
        return out
