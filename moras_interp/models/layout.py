"""Token bookkeeping: where the image tokens are, which patch of the ORIGINAL image each one covers,
where the instruction is and which position is the last prompt token.

All positions are indices into the (left-padded) batch row the layout belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PatchGrid:
    """One rectangular grid of image tokens (a base image, a tile, a thumbnail, a hi-res canvas).

    Attributes:
        name: what the grid is ("image", "base", "hires", "tile r0 c1", "thumbnail", "global").
        rows, cols: grid shape; ``rows * cols == len(positions)``.
        positions: LongTensor [rows*cols], sequence positions in raster (row-major) order.
        boxes: FloatTensor [rows*cols, 4], the ``(x0, y0, x1, y1)`` box in ORIGINAL image pixels that
            each token covers (clipped to the image; a token that covers only padding has an empty box,
            ``x1 <= x0`` or ``y1 <= y0``).
    """

    name: str
    rows: int
    cols: int
    positions: torch.Tensor
    boxes: torch.Tensor

    def __post_init__(self) -> None:
        n = self.rows * self.cols
        if self.positions.numel() != n or tuple(self.boxes.shape) != (n, 4):
            raise ValueError(
                f"PatchGrid {self.name!r}: rows*cols={n} but got {self.positions.numel()} positions and "
                f"boxes of shape {tuple(self.boxes.shape)} (expected ({n}, 4))."
            )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "rows": self.rows,
            "cols": self.cols,
            "positions": self.positions.tolist(),
            "boxes": self.boxes.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> PatchGrid:
        return cls(
            name=d["name"],
            rows=int(d["rows"]),
            cols=int(d["cols"]),
            positions=torch.tensor(d["positions"], dtype=torch.long),
            boxes=torch.tensor(d["boxes"], dtype=torch.float32).reshape(-1, 4),
        )


@dataclass
class ImageLayout:
    """All tokens of one image in one example.

    Attributes:
        positions: LongTensor [n_tokens], every position that holds an image (feature) token of this
            image, in sequence order (separator tokens such as LLaVA-NeXT's row newlines included).
        grids: the patch grids these tokens form; their positions are a subset of ``positions``.
        separators: LongTensor [n_sep], positions of feature tokens that cover no patch (LLaVA-NeXT's
            ``image_newline``); empty for most architectures.
        image_size: ``(width, height)`` of the original image in pixels.
    """

    positions: torch.Tensor
    grids: list[PatchGrid]
    image_size: tuple[int, int]
    separators: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @property
    def n_tokens(self) -> int:
        return int(self.positions.numel())

    def grid_positions(self) -> torch.Tensor:
        """LongTensor [n_patch_tokens]: positions of all grid tokens, grid after grid."""
        return torch.cat([g.positions for g in self.grids]) if self.grids else torch.zeros(0, dtype=torch.long)

    def grid_boxes(self) -> torch.Tensor:
        """FloatTensor [n_patch_tokens, 4]: boxes aligned with :meth:`grid_positions`."""
        return torch.cat([g.boxes for g in self.grids]) if self.grids else torch.zeros(0, 4)

    def to_dict(self) -> dict:
        return {
            "positions": self.positions.tolist(),
            "grids": [g.to_dict() for g in self.grids],
            "image_size": list(self.image_size),
            "separators": self.separators.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ImageLayout:
        return cls(
            positions=torch.tensor(d["positions"], dtype=torch.long),
            grids=[PatchGrid.from_dict(g) for g in d["grids"]],
            image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
            separators=torch.tensor(d.get("separators", []), dtype=torch.long),
        )


@dataclass
class TokenLayout:
    """Token bookkeeping for one example (one row of a left-padded batch).

    Attributes:
        seq_len: length of the padded row.
        n_pad: number of left-padding positions (positions ``0 .. n_pad-1`` are padding).
        images: one :class:`ImageLayout` per image, in prompt order.
        instruction: LongTensor [n_instr], positions of the user's instruction text tokens (the prompt
            text the caller passed, without chat-template scaffolding or image tokens).
        last: position of the last prompt token (the one that predicts the first new token).
    """

    seq_len: int
    n_pad: int
    images: list[ImageLayout]
    instruction: torch.Tensor
    last: int

    @property
    def image_positions(self) -> torch.Tensor:
        """LongTensor [n_image_tokens]: every image-token position of every image, in sequence order."""
        if not self.images:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([im.positions for im in self.images])

    @property
    def text_positions(self) -> torch.Tensor:
        """LongTensor: non-padding, non-image positions."""
        mask = torch.ones(self.seq_len, dtype=torch.bool)
        mask[: self.n_pad] = False
        mask[self.image_positions] = False
        return mask.nonzero().flatten()

    def to_dict(self) -> dict:
        return {
            "seq_len": self.seq_len,
            "n_pad": self.n_pad,
            "images": [im.to_dict() for im in self.images],
            "instruction": self.instruction.tolist(),
            "last": self.last,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TokenLayout:
        return cls(
            seq_len=int(d["seq_len"]),
            n_pad=int(d["n_pad"]),
            images=[ImageLayout.from_dict(im) for im in d["images"]],
            instruction=torch.tensor(d["instruction"], dtype=torch.long),
            last=int(d["last"]),
        )
