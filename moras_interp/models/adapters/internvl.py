"""InternVL, HF port (``InternVLForConditionalGeneration``): InternViT + pixel shuffle + MLP + Qwen2/InternLM.

Image tokens: ``<img><IMG_CONTEXT>*(image_seq_length · n_tiles)</img>``. With ``crop_to_patches`` the
image is squashed to the ``cols × rows`` tile canvas whose aspect is closest to the image's
(``get_optimal_tiled_canvas``; note it returns (cols, rows)), cut into tiles row-major, and, when there
is more than one tile, followed by a thumbnail (the whole image squashed to one tile). Each tile is a
``√image_seq_length``-sided token grid in raster order (pixel shuffle keeps raster order). Without
``crop_to_patches`` the image is one squashed tile.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from moras_interp.models.adapters.base import Adapter, ImageSpec
from moras_interp.models.adapters.geometry import square_side, tiled_grids


class InternVLAdapter(Adapter):
    name = "internvl"
    hf_classes = ("InternVLForConditionalGeneration",)
    example = "OpenGVLab/InternVL3-1B-hf"
    vision_shape = "[n_tiles, 1+patches, d_v]"  # tiles + thumbnail of every image; CLS first
    projector_shape = "[n_tiles, image_seq_length, d]"

    def tile_layout(self, width: int, height: int) -> tuple[int, int]:
        """(tile rows, tile cols) the image processor cuts a ``width × height`` image into."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        ip = self.processor.image_processor
        if not getattr(ip, "crop_to_patches", False) or int(ip.max_patches) <= 1:
            return 1, 1
        size = ip.size
        tile = (int(size["height"]), int(size["width"])) if isinstance(size, dict) else (int(size.height), int(size.width))
        cols, rows = get_optimal_tiled_canvas((height, width), tile, int(ip.min_patches), int(ip.max_patches))
        return int(rows), int(cols)

    def image_specs(self, enc: dict[str, Any], images: list[list[Image.Image]]) -> list[list[ImageSpec]]:
        seq = int(self.processor.image_seq_length)
        side = square_side(seq, f"{self.name} image_seq_length")
        out: list[list[ImageSpec]] = []
        for ims in images:
            specs = []
            for im in ims:
                rows, cols = self.tile_layout(im.width, im.height)
                if rows * cols == 1:
                    grids = tiled_grids(im.width, im.height, 0, 0, side, overview="image")
                else:
                    grids = tiled_grids(im.width, im.height, rows, cols, side, overview="thumbnail")
                specs.append(ImageSpec(len(grids) * seq, grids))
            out.append(specs)
        return out
