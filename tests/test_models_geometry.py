"""Token layouts against pixel geometry: which part of the ORIGINAL image each image token covers.

Two independent references:

* the model itself: with the vision encoder layers turned into identities (plain torch hooks), every
  stage left (patch embedding, per-token norms, merger / pixel shuffle / pooling, projector) is local, so
  pasting a coloured square into a blank image changes exactly the image tokens whose patches see the
  square; the layout's pixel boxes must predict which tokens change (checked on every grid: LLaVA-NeXT's
  base and unpadded hires canvas, Idefics3/InternVL tiles and overview, Qwen2.5-VL's window-ordered merger);
* box coordinates computed by hand from each processor's resize / pad / crop / tiling rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from moras_interp import load_model
from moras_interp.models import MLLM
from moras_interp.models.tiny import TINY_ARCHS, build_tiny

VISION_LAYERS = {
    "llava": "model.vision_tower.encoder.layers", "llava_next": "model.vision_tower.encoder.layers",
    "qwen2_vl": "model.visual.blocks", "qwen2_5_vl": "model.visual.blocks",
    "idefics3": "model.vision_model.encoder.layers", "gemma3": "model.vision_tower.encoder.layers",
    "internvl": "model.vision_tower.encoder.layer", "paligemma": "model.vision_tower.encoder.layers",
}
VARIANTS = (*TINY_ARCHS, "llava_pad")
"""``llava_pad``: the tiny LLaVA with LLaVA-1.5's pad-to-square image processor instead of HF's centre crop."""


@pytest.fixture(scope="module")
def models() -> Iterator[Callable[[str], MLLM]]:
    cache: dict[str, MLLM] = {}

    def get(variant: str) -> MLLM:
        if variant not in cache:
            hf, proc = build_tiny("llava" if variant == "llava_pad" else variant)
            if variant == "llava_pad":
                from transformers import LlavaImageProcessorPil

                proc.image_processor = LlavaImageProcessorPil(size={"shortest_edge": 56},
                                                              crop_size={"height": 56, "width": 56}, do_pad=True)
            cache[variant] = load_model(hf, processor=proc)
        return cache[variant]

    yield get
    cache.clear()


def grid_boxes(xs: list[float], ys: list[float]) -> torch.Tensor:
    """Raster-order boxes of the grid with column edges ``xs`` and row edges ``ys``: [len(ys)-1 * len(xs)-1, 4]."""
    return torch.tensor([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(len(ys) - 1) for c in range(len(xs) - 1)])


def overlap(boxes: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """Intersection area of each box [n, 4] with one box: [n]."""
    w = (torch.minimum(boxes[:, 2], torch.tensor(box[2])) - torch.maximum(boxes[:, 0], torch.tensor(box[0]))).clamp(min=0)
    h = (torch.minimum(boxes[:, 3], torch.tensor(box[3])) - torch.maximum(boxes[:, 1], torch.tensor(box[1]))).clamp(min=0)
    return w * h


def gap(boxes: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """Chebyshev distance in pixels from each box to ``box`` (0 when they touch or overlap): [n]."""
    dx = torch.stack([boxes[:, 0] - box[2], box[0] - boxes[:, 2], torch.zeros(len(boxes))]).amax(0)
    dy = torch.stack([boxes[:, 1] - box[3], box[1] - boxes[:, 3], torch.zeros(len(boxes))]).amax(0)
    return torch.maximum(dx, dy)


# ----------------------------------------------------------------------------------------- coloured square
SQUARES = ((33, 6, 48, 21), (3, 25, 14, 37))
MARGIN = 6.0
"""Pixels around the square where resampling (bicubic / Lanczos kernels) may or may not leak: not judged."""


def square_image(square: tuple[int, int, int, int] | None, size: tuple[int, int] = (60, 40)) -> Image.Image:
    im = Image.new("RGB", size, (128, 128, 128))
    if square is not None:
        ImageDraw.Draw(im).rectangle((square[0], square[1], square[2] - 1, square[3] - 1), fill=(250, 20, 20))
    return im


@pytest.mark.parametrize("variant", VARIANTS)
def test_tokens_covering_a_square_are_the_tokens_that_see_it(models: Callable[[str], MLLM], variant: str) -> None:
    model = models(variant)
    hf = model.hf
    arch = "llava" if variant == "llava_pad" else variant

    def identity(_m: torch.nn.Module, args: tuple, kwargs: dict, _out: Any) -> Any:
        return args[0] if args else kwargs["hidden_states"]

    # prepend: before transformers' output capturing, which LLaVA reads its feature layer from
    hooks = [layer.register_forward_hook(identity, with_kwargs=True, prepend=True)
             for layer in hf.get_submodule(VISION_LAYERS[arch])]
    try:
        embeds = []
        for sq in (None, *SQUARES):
            batch = model.prepare([square_image(sq)], ["what is this ?"])
            with torch.no_grad():
                embeds.append(hf(**batch.inputs, output_hidden_states=True).hidden_states[0][0])
    finally:
        for h in hooks:
            h.remove()
    (image,) = batch.layouts[0].images
    assert image.image_size == (60, 40)
    for sq, emb in zip(SQUARES, embeds[1:]):
        changed = (emb - embeds[0]).abs().amax(-1) > 1e-6
        assert not changed[image.separators].any(), "separator tokens carry no pixels"
        text = torch.ones(len(changed), dtype=torch.bool)
        text[image.positions] = False
        assert not changed[text].any()
        n_seeing = 0
        for g in image.grids:
            sees = overlap(g.boxes, sq) > 0
            far = gap(g.boxes, sq) >= MARGIN
            n_seeing += int(sees.sum())
            assert bool(changed[g.positions][sees].all()), f"{variant} {g.name}: a token covering the square did not change"
            assert not bool(changed[g.positions][far].any()), f"{variant} {g.name}: a token far from the square changed"
        assert n_seeing > 0 and int(changed.sum()) >= n_seeing


# ----------------------------------------------------------------------------------------- hand computation
def expected_grids(variant: str, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Grid name -> boxes, computed by hand from each processor's rules (see the comments)."""
    if variant == "llava_pad" and size == (75, 50):
        # pad 75x50 to 75x75 (12 px on top), resize to 56: a 14-px patch is 18.75 px of the padded image
        return {"image": grid_boxes([0, 18.75, 37.5, 56.25, 75], [0, 6.75, 25.5, 44.25, 50])}
    if variant == "llava" and size == (75, 50):
        # shortest edge 50 -> 56 (x1.12, 84x56), centre crop 56: x from 14 px = 12.5 original px; cells 12.5 px
        return {"image": grid_boxes([12.5, 25, 37.5, 50, 62.5], [0, 12.5, 25, 37.5, 50])}
    if variant in ("qwen2_vl", "qwen2_5_vl") and size == (75, 50):
        # smart_resize to multiples of 28: 84x56 = min_pixels; merged 28-px tokens are 25x25 original px
        return {"image": grid_boxes([0, 25, 50, 75], [0, 25, 50])}
    if variant == "llava_next" and size == (60, 40):
        # base: squash to 28x28, 2x2 patches. hires: best pinpoint 56x56 (2x2 tiles); resize to 56x38 (ceil),
        # paste at y=9; feature canvas 4x4 cells of 14 px; unpad keeps rows 1..2 (int(40*4/60)=2 rows, pad 1)
        y = [(14 * r - 9) * 40 / 38 for r in (1, 2, 3)]
        return {"base": grid_boxes([0, 30, 60], [0, 20, 40]), "hires": grid_boxes([0, 15, 30, 45, 60], y)}
    if variant == "llava_next" and size == (40, 60):
        # portrait: resize to 38x56, paste at x=9, unpad keeps columns 1..2
        x = [(14 * c - 9) * 40 / 38 for c in (1, 2, 3)]
        return {"base": grid_boxes([0, 20, 40], [0, 30, 60]), "hires": grid_boxes(x, [0, 15, 30, 45, 60])}
    if variant in ("idefics3", "internvl") and size == (60, 40):
        # squashed to 3 cols x 2 rows of tiles (20x20 original px), 2x2 tokens each; then the overview
        out = {f"tile r{r} c{c}": grid_boxes([20 * c, 20 * c + 10, 20 * c + 20], [20 * r, 20 * r + 10, 20 * r + 20])
               for r in range(2) for c in range(3)}
        out["global" if variant == "idefics3" else "thumbnail"] = grid_boxes([0, 30, 60], [0, 20, 40])
        return out
    if variant in ("gemma3", "paligemma") and size == (60, 40):
        # squash to a square: 4x4 tokens of 15x10 original px
        return {"image": grid_boxes([0, 15, 30, 45, 60], [0, 10, 20, 30, 40])}
    raise KeyError((variant, size))


HAND_CASES = [("llava_pad", (75, 50)), ("llava", (75, 50)), ("qwen2_vl", (75, 50)), ("qwen2_5_vl", (75, 50)),
              ("llava_next", (60, 40)), ("llava_next", (40, 60)), ("idefics3", (60, 40)), ("internvl", (60, 40)),
              ("gemma3", (60, 40)), ("paligemma", (60, 40))]


@pytest.mark.parametrize(("variant", "size"), HAND_CASES)
def test_boxes_equal_hand_computed_processor_geometry(models: Callable[[str], MLLM], variant: str,
                                                      size: tuple[int, int]) -> None:
    model = models(variant)
    batch = model.prepare([square_image(None, size)], ["what is this ?"])
    (image,) = batch.layouts[0].images
    want = expected_grids(variant, size)
    assert [g.name for g in image.grids] == list(want)
    for g in image.grids:
        assert g.rows * g.cols == len(want[g.name])
        torch.testing.assert_close(g.boxes, want[g.name].to(torch.float32), atol=1e-4, rtol=0, msg=g.name)
    if variant.startswith("qwen"):
        assert batch.inputs["image_grid_thw"].tolist() == [[1, 4, 6]]
    if variant == "llava_next":
        hires = image.grids[1]
        assert image.separators.numel() == hires.rows  # one newline per hires row


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(60, 40), (40, 64), (97, 31)])
def test_boxes_tile_the_image(models: Callable[[str], MLLM], variant: str, size: tuple[int, int]) -> None:
    """Per grid no two boxes overlap; together the grids cover the image (HF's centre crop: the crop window)."""
    model = models(variant)
    batch = model.prepare([square_image(None, size)], ["what is this ?"])
    (image,) = batch.layouts[0].images
    w, h = size
    xs, ys = torch.meshgrid(torch.arange(w) + 0.5, torch.arange(h) + 0.5, indexing="xy")
    pts = torch.stack([xs.flatten(), ys.flatten()], -1)
    covered = torch.zeros(len(pts), dtype=torch.bool)
    for g in image.grids:
        b = g.boxes.double()
        assert bool((b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all())
        assert bool((b[:, [0, 2]] >= 0).all() and (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] >= 0).all()
                    and (b[:, [1, 3]] <= h).all())
        iw = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0])).clamp(min=0)
        ih = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1])).clamp(min=0)
        inter = (iw * ih).fill_diagonal_(0)
        assert float(inter.max()) < 1e-6, f"{g.name}: boxes overlap"
        inside = ((pts[:, None, 0] >= b[None, :, 0]) & (pts[:, None, 0] < b[None, :, 2])
                  & (pts[:, None, 1] >= b[None, :, 1]) & (pts[:, None, 1] < b[None, :, 3]))
        covered |= inside.any(1)
    if variant == "llava":  # HF's LLaVA-1.5 processor: shortest edge to 56, centre crop 56x56
        rw, rh = (int(56 * w / h), 56) if w > h else (56, int(56 * h / w))  # long edge truncated to int
        sx, sy = rw / w, rh / h
        left, top = (rw - 56) // 2, (rh - 56) // 2
        window = ((pts[:, 0] >= left / sx) & (pts[:, 0] < (left + 56) / sx) & (pts[:, 1] >= top / sy)
                  & (pts[:, 1] < (top + 56) / sy))
        assert torch.equal(covered, window)
    else:
        assert bool(covered.all()), f"{int((~covered).sum())} pixels are covered by no token"
