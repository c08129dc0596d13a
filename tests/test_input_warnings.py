"""Lossy input conversions warn (and are done right): 16-bit images, transparency, other colour modes, words
outside the tokenizer's vocabulary. Expected pixels come from numpy formulas written here."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import moras_interp as mi
from moras_interp.eval.datasets import Example
from moras_interp.models import MLLM
from moras_interp.models.batch import UnknownTokenWarning, warn_unknown_words
from moras_interp.models.images import ImageConversionWarning, load_image

RNG = np.random.default_rng(0)


def _composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Over a white background, exact integer arithmetic then round-half-up (no ties are possible: 255 is odd)."""
    num = rgb.astype(np.int64) * alpha[..., None] + 255 * (255 - alpha[..., None].astype(np.int64))
    return ((2 * num + 255) // 510).astype(np.uint8)


def _no_warning(fn: Callable[[], object]) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    a = (np.arange(40 * 30).reshape(30, 40) * 54).astype(np.uint16)  # 0 … 64746
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I")
    with pytest.warns(ImageConversionWarning, match=r"g16\.png: 16-bit image .* scaled to 8 bits"):
        got = np.asarray(load_image(path))
    expected = np.floor(a.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert got.shape == (30, 40, 3) and np.array_equal(got, np.repeat(expected[..., None], 3, axis=2))
    assert (got == 255).mean() < 0.01  # Pillow's own convert("RGB") makes ~100 % of it white
    with pytest.warns(ImageConversionWarning, match="16-bit"):  # the dataset loader uses the same conversion
        assert np.array_equal(np.asarray(Example("x ?", image=str(path), id="e1").load_image()), got)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(tmp_path: Path, mode: str) -> None:
    rgb = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (20, 24), dtype=np.uint8)
    if mode == "RGBA":
        im = Image.fromarray(np.dstack([rgb, alpha]))
        expected = _composite(rgb, alpha)
    elif mode == "LA":
        gray = rgb[..., 0]
        im = Image.frombytes("LA", (24, 20), np.dstack([gray, alpha]).tobytes())
        expected = _composite(np.repeat(gray[..., None], 3, axis=2), alpha)
    else:  # palette image whose colour 0 is transparent
        idx = RNG.integers(0, 4, (20, 24), dtype=np.uint8)
        palette = np.array([[10, 20, 30], [200, 100, 50], [0, 255, 0], [90, 90, 90]], dtype=np.uint8)
        im = Image.frombytes("P", (24, 20), idx.tobytes())
        im.putpalette(palette.flatten().tolist())
        im.info["transparency"] = 0
        expected = palette[idx].copy()
        expected[idx == 0] = 255
    path = tmp_path / f"t_{mode}.png"
    im.save(path, **({"transparency": 0} if mode == "P" else {}))
    with pytest.warns(ImageConversionWarning, match="composited on a white background"):
        got = np.asarray(load_image(path))
    assert np.array_equal(got, expected)


def test_lossless_modes_do_not_warn_and_opaque_alpha_is_dropped() -> None:
    rgb = RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    opaque = Image.fromarray(np.dstack([rgb, np.full((8, 9), 255, np.uint8)]))
    assert np.array_equal(np.asarray(_no_warning(lambda: load_image(opaque))), rgb)
    gray = Image.fromarray(rgb[..., 1])
    assert np.array_equal(np.asarray(_no_warning(lambda: load_image(gray))), np.repeat(rgb[..., 1:2], 3, axis=2))
    assert _no_warning(lambda: load_image(Image.fromarray(rgb))).mode == "RGB"


def test_cmyk_warns() -> None:
    cmyk = Image.frombytes("CMYK", (7, 6), RNG.integers(0, 256, (6, 7, 4), dtype=np.uint8).tobytes())
    with pytest.warns(ImageConversionWarning, match="mode CMYK converted"):
        got = load_image(cmyk)
    assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(cmyk.convert("RGB")))


def test_prepare_sees_the_composited_image(models: Callable[..., MLLM]) -> None:
    model = models("llava")
    rgb = RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    alpha = np.tile(np.linspace(0, 255, 60).astype(np.uint8), (40, 1))
    with pytest.warns(ImageConversionWarning):
        got = model.prepare([Image.fromarray(np.dstack([rgb, alpha]))], ["what is in the image ?"])
    ref = model.prepare([Image.fromarray(_composite(rgb, alpha))], ["what is in the image ?"])
    assert torch.equal(got.inputs["pixel_values"], ref.inputs["pixel_values"])


@pytest.fixture(scope="module")
def toy() -> MLLM:
    return mi.load_model("toy-llava")


def test_out_of_vocabulary_words_warn_once_naming_them(toy: MLLM) -> None:
    with pytest.warns(UnknownTokenWarning, match=r"became '<unk>': 'flamethrower'\.") as rec:
        batch = toy.prepare([None], ["how do i make a flamethrower ?"])
    assert len([w for w in rec if issubclass(w.category, UnknownTokenWarning)]) == 1
    assert int((batch.input_ids == toy.tokenizer.unk_token_id).sum()) == 1
    with pytest.warns(UnknownTokenWarning, match=r"2 word\(s\) .*'flamethrower', 'zeppelin'") as rec:
        toy.prepare([None, None], ["how do i make a flamethrower ?", "a flamethrower zeppelin ?"])
    assert len([w for w in rec if issubclass(w.category, UnknownTokenWarning)]) == 1
    _no_warning(lambda: toy.prepare([None], ["how do i make a bomb ?"]))


def test_no_warning_without_an_unknown_token() -> None:
    tok = SimpleNamespace(unk_token_id=None, unk_token=None)  # e.g. byte-level BPE: nothing is ever unknown
    _no_warning(lambda: warn_unknown_words(tok, torch.tensor([[0, 1, 2]]), ["anything at all"]))


def test_a_truncated_or_fake_image_file_is_an_error_naming_it(tmp_path):
    from moras_interp.models.images import ImageReadError, load_image

    good = tmp_path / "ok.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    for bad in (cut, fake):
        with pytest.raises(ImageReadError, match=rf"{bad.name}: cannot read this image"):
            load_image(bad)
