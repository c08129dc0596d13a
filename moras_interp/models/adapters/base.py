"""The adapter interface: one small class per architecture declaring where things live.

To add an architecture, subclass :class:`Adapter` in a new module of this package, fill in the
class attributes (module paths) and :meth:`Adapter.image_specs` (how many tokens an image becomes and
which pixels of the original image each token covers), then register it in ``adapters/__init__.py``.
``tests/test_models.py`` runs every registered adapter against HF's own outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image

from moras_interp.models.adapters.tl_points import block_points, final_norm_points
from moras_interp.models.hooks import HookPoint


@dataclass
class GridSpec:
    """A patch grid of one image, before it is placed in a sequence.

    Attributes:
        name: "image", "base", "hires", "tile r0 c1", "thumbnail", ...
        rows, cols: grid shape.
        boxes: FloatTensor [rows*cols, 4] of (x0, y0, x1, y1) in ORIGINAL image pixels, raster order.
        offsets: LongTensor [rows*cols], index of each grid token among this image's image tokens
            (the image's image-token positions in sequence order).
    """

    name: str
    rows: int
    cols: int
    boxes: torch.Tensor
    offsets: torch.Tensor


@dataclass
class ImageSpec:
    """How one image appears in the token sequence.

    Attributes:
        n_tokens: how many positions with ``image_token_id`` the image occupies.
        grids: its patch grids.
        separators: LongTensor, offsets of image tokens that cover no patch (e.g. newline tokens).
    """

    n_tokens: int
    grids: list[GridSpec]
    separators: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


def raster_boxes(rows: int, cols: int, cell_w: float, cell_h: float, x_off: float = 0.0, y_off: float = 0.0) -> torch.Tensor:
    """FloatTensor [rows*cols, 4]: raster-order boxes of a regular grid in some pixel frame."""
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)
    x0 = x_off + c * cell_w
    y0 = y_off + r * cell_h
    return torch.stack([x0, y0, x0 + cell_w, y0 + cell_h], dim=-1)


def to_original(boxes: torch.Tensor, *, scale_x: float, scale_y: float, shift_x: float = 0.0, shift_y: float = 0.0,
                pad_x: float = 0.0, pad_y: float = 0.0, width: int, height: int) -> torch.Tensor:
    """Map boxes from a processed frame back to the original image: ``orig = (proc + shift) / scale - pad``.

    ``shift`` is the offset of the processed frame inside the resized image (e.g. a center crop's
    left/top), ``scale`` = resized size / (original + padding) size and ``pad`` the padding added on the
    left/top before resizing. The result is clipped to the image; tokens that cover only padding end up
    with empty boxes. Returns float32 [n, 4].
    """
    out = boxes.clone().to(torch.float64)
    out[:, [0, 2]] = (out[:, [0, 2]] + shift_x) / scale_x - pad_x
    out[:, [1, 3]] = (out[:, [1, 3]] + shift_y) / scale_y - pad_y
    out[:, [0, 2]] = out[:, [0, 2]].clamp(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clamp(0, height)
    return out.to(torch.float32)


class Adapter:
    """Where things live in one architecture family. Paths are relative to the HF top-level model."""

    name: ClassVar[str] = "base"
    hf_classes: ClassVar[tuple[str, ...]] = ()
    decoder: ClassVar[str] = "model.language_model"
    vision_root: ClassVar[str] = "model.vision_tower"
    vision_layer_candidates: ClassVar[tuple[str, ...]] = (
        "encoder.layers", "vision_model.encoder.layers", "blocks", "encoder.layer", "layers")
    projector: ClassVar[str] = "model.multi_modal_projector"
    lm_head: ClassVar[str] = "lm_head"
    embed_tokens: ClassVar[str] = "embed_tokens"
    """The token-embedding module, relative to ``decoder`` (``hook_embed``; Gemma-family: a scaled embedding)."""
    attn_out: ClassVar[tuple[str, int | None]] = ("self_attn", 0)
    mlp_out: ClassVar[tuple[str, int | None]] = ("mlp", None)
    ln1: ClassVar[str] = "input_layernorm"
    """The pre-attention norm of a decoder layer (TransformerLens ``ln1``)."""
    ln2: ClassVar[str] = "post_attention_layernorm"
    """The pre-MLP norm (TransformerLens ``ln2``); its input is ``hook_resid_mid``."""
    nested_images: ClassVar[bool] = False
    example: ClassVar[str] = ""
    examples: ClassVar[dict[str, str]] = {}
    """HF class -> example checkpoint, where one adapter serves several classes (else ``example``)."""
    vision_shape: ClassVar[str] = "[b*img, patches, d_v]"
    projector_shape: ClassVar[str] = "[b*img, tokens, d]"

    def __init__(self, hf: torch.nn.Module, processor: Any) -> None:
        self.hf = hf
        self.processor = processor
        self.config = hf.config
        self.vision_layers = self._find_vision_layers()

    def _find_vision_layers(self) -> str:
        root = self.module(self.vision_root)
        for cand in self.vision_layer_candidates:
            mod: Any = root
            for part in cand.split("."):
                mod = getattr(mod, part, None)
                if mod is None:
                    break
            if isinstance(mod, torch.nn.ModuleList):
                return f"{self.vision_root}.{cand}"
        raise AttributeError(
            f"{type(self.hf).__name__}: no vision layer list under {self.vision_root!r} (tried "
            f"{', '.join(self.vision_layer_candidates)}); set vision_layer_candidates in the {self.name!r} adapter."
        )

    # ------------------------------------------------------------------ tokens
    @property
    def image_token_id(self) -> int:
        """The id the processor repeats once per image feature (``config.image_token_id``)."""
        cfg = self.config
        tid = getattr(cfg, "image_token_id", None)
        if tid is None:
            tid = getattr(cfg, "image_token_index", None)
        if tid is None:
            raise ValueError(f"{type(self.hf).__name__}: config has no image_token_id / image_token_index.")
        return int(tid)

    def image_placeholder(self) -> str:
        """The text placeholder for one image when prompts are built without a chat template."""
        return str(self.processor.image_token)

    def processor_images(self, images: list[list[Image.Image]]) -> Any:
        """Images in the nesting this processor expects (flat list by default; nested for Gemma3)."""
        if self.nested_images:
            return images
        return [im for ims in images for im in ims]

    def image_specs(self, enc: dict[str, Any], images: list[list[Image.Image]]) -> list[list[ImageSpec]]:
        """Per example, per image: the token count and patch grids. Must be implemented per family."""
        raise TypeError(f"Adapter {type(self).__name__} does not define image_specs().")

    # ------------------------------------------------------------------ hooks
    def n_layers(self) -> int:
        return len(self.module(self.decoder + ".layers"))

    def n_vision_layers(self) -> int:
        return len(self.module(self.vision_layers))

    def module(self, path: str) -> torch.nn.Module:
        mod: Any = self.hf
        for part in path.split("."):
            if not hasattr(mod, part):
                raise AttributeError(
                    f"{type(self.hf).__name__} has no module {path!r} (missing {part!r}); the "
                    f"{self.name!r} adapter expected it. If transformers moved this module, update "
                    f"moras_interp/models/adapters/{self.name}.py."
                )
            mod = getattr(mod, part)
        return mod

    def hook_points(self) -> list[HookPoint]:
        """All canonical hook points of this model, in execution order (per layer: ``tl_points.block_points``)."""
        pts: list[HookPoint] = [  # embed_tokens runs first: before the vision tower, in every family
            HookPoint("hook_embed", f"{self.decoder}.{self.embed_tokens}", "output", None, (-1,), "[b, pos, d]")]
        for l in range(self.n_vision_layers()):
            pts.append(HookPoint(f"vision.blocks.{l}.hook_resid_post", f"{self.vision_layers}.{l}", "output",
                                 None, (0, l), self.vision_shape))
        pts.append(HookPoint("projector.hook_out", self.projector, "output", None, (1,), self.projector_shape))
        layers = self.decoder + ".layers"
        pts.append(HookPoint("hook_inputs_embeds", f"{layers}.0", "input", None, (2,), "[b, pos, d]"))
        for l in range(self.n_layers()):
            pts += block_points(self, l)
        pts += final_norm_points(self)
        pts.append(HookPoint("hook_logits", self.lm_head, "output", None, (5,), "[b, pos, vocab]"))
        return pts
