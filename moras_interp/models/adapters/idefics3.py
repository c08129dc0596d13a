"""Idefics3 / SmolVLM (``Idefics3ForConditionalGeneration``): SigLIP tower + pixel-shuffle connector + Llama.

Module paths differ from the LLaVA family: decoder ``model.text_model``, vision ``model.vision_model``,
projector ``model.connector`` (pixel shuffle + linear; output [n_frames, image_seq_len, d]).

Image tokens: the image is squashed to a canvas of ``rows × cols`` tiles of ``max_image_size`` pixels
(``image_processor.get_number_of_image_patches``), each tile is written as
``<fake_token_around_image><row_i_col_j><image>*image_seq_len``, row-major, then the whole image squashed
to one tile: ``<fake_token_around_image><global-img><image>*image_seq_len<fake_token_around_image>``. Each
tile is a ``√image_seq_len``-sided token grid in raster order. The ``<row_i_col_j>`` / ``<global-img>``
markers are ordinary text tokens, so every image token belongs to a grid (no separators).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from moras_interp.models.adapters.base import Adapter, ImageSpec
from moras_interp.models.adapters.geometry import square_side, tiled_grids


class Idefics3Adapter(Adapter):
    name = "idefics3"
    hf_classes = ("Idefics3ForConditionalGeneration",)
    decoder = "model.text_model"
    vision_root = "model.vision_model"
    projector = "model.connector"
    example = "HuggingFaceTB/SmolVLM-Instruct"
    vision_shape = "[n_tiles, patches, d_v]"  # tiles + global image of every image
    projector_shape = "[n_tiles, image_seq_len, d]"

    def image_specs(self, enc: dict[str, Any], images: list[list[Image.Image]]) -> list[list[ImageSpec]]:
        seq = int(self.processor.image_seq_len)
        side = square_side(seq, f"{self.name} image_seq_len")
        ip = self.processor.image_processor
        out: list[list[ImageSpec]] = []
        for ims in images:
            specs = []
            for im in ims:
                _, rows, cols = ip.get_number_of_image_patches(im.height, im.width)
                grids = tiled_grids(im.width, im.height, rows, cols, side, overview="global")
                specs.append(ImageSpec(len(grids) * seq, grids))
            out.append(specs)
        return out
