"""Pictures and exports of CrossModalAttention, heatmap geometry over the original image, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from moras_interp.attention import CrossModalAttention, cross_modal_attention
from moras_interp.cli import main
from moras_interp.models.adapters import supported_architectures
from moras_interp.models.loading import load_model
from moras_interp.models.tiny import TINY_ARCHS, build_tiny, tiny_image

PROMPTS = ["describe this image", "what is the small thing in the picture here"]


@pytest.fixture(scope="module")
def tiny():
    hf, proc = build_tiny("llava", attn_implementation="sdpa", seed=0)
    return load_model(hf, processor=proc, attn_implementation=None, validate=False)


@pytest.fixture(scope="module")
def attn(tiny) -> CrossModalAttention:
    batch = tiny.prepare(images=[tiny_image(60, 40, seed=0), tiny_image(44, 52, seed=1)], prompts=PROMPTS)
    return cross_modal_attention(tiny, batch, query="instruction")


def _heat(fig) -> np.ndarray:
    return np.asarray(next(t for t in fig.data if t.type == "heatmap").z, dtype=float)


def test_titles_and_colour_scales(attn) -> None:
    fig = attn.heatmap(0, heads=[1, 2], layers=[1])
    title = fig.layout.title.text
    assert "LlavaForConditionalGeneration" in title and "layer 1" in title and "L1H1" in title and "L1H2" in title
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert heat.zmin == 0 and heat.colorbar.title.text == "attention"
    # a* of heads 1, 2 of layer 1 painted over the original image: each token's value on its own box
    a = attn.aggregate(0, heads=[(1, 1), (1, 2)]).numpy()
    im = attn.layouts[0].images[0]
    z = _heat(fig)
    assert z.shape == (im.image_size[1], im.image_size[0])
    for v, (x0, y0, x1, y1) in zip(a, im.grid_boxes().tolist()):
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        assert z[cy, cx] == pytest.approx(v, rel=1e-6)
    grid = attn.layer_head_grid(1, highlight=[(0, 3)])
    assert np.asarray(grid.data[0].z).shape == (2, 4) and len(grid.layout.shapes) == 1
    np.testing.assert_allclose(np.asarray(grid.data[0].z), attn.image_mass(1).numpy(), rtol=1e-6)
    sm = attn.small_multiples(0)
    assert [a.text for a in sm.layout.annotations][:2] == ["layer 0", "layer 1"]
    with pytest.raises(ValueError, match="same image"):
        attn.difference(attn, 0, other_example=1)
    other = CrossModalAttention(attn.rows.flip(-1), attn.query_positions, attn.query_valid, attn.layers, attn.heads,
                                attn.layouts, model_id=attn.model_id, prompts=["flipped"], images=attn.images)
    fig = attn.difference(other, 0, heads="all", box=(5, 5, 30, 30))
    d = next(t for t in fig.data if t.type == "heatmap")
    assert d.zmid == 0 and "region share" in fig.layout.title.text and "flipped" in fig.layout.title.text
    want = other.aggregate(0) - attn.aggregate(0)
    im = attn.layouts[0].images[0]
    z = np.asarray(d.z, dtype=float)
    for v, (x0, y0, x1, y1) in zip(want.numpy(), im.grid_boxes().tolist()):
        assert z[int((y0 + y1) / 2), int((x0 + x1) / 2)] == pytest.approx(v, rel=1e-5, abs=1e-9)


def test_png_and_html_exports_open_and_are_not_blank(attn, tmp_path) -> None:
    for kind in ("heatmap", "layer_head_grid", "small_multiples"):
        fig = getattr(attn, kind)(0)
        path = attn.save_png(tmp_path / f"{kind}.png", 0, kind=kind)
        with Image.open(path) as im:
            assert im.size == (int(fig.layout.width), int(fig.layout.height))
            assert np.asarray(im.convert("RGB"), dtype=float).std() > 5.0
        html = attn.save_html(tmp_path / f"{kind}.html", 0, kind=kind).read_text()
        assert "plotly" in html.lower() and "<html" in html.lower()
    with pytest.raises(ValueError, match="kind="):
        attn.save_png(tmp_path / "x.png", 0, kind="pie")


@pytest.mark.parametrize(("size", "pad"), [((84, 42), True), ((42, 84), True), ((84, 42), False)])
def test_heatmap_geometry_matches_the_pixels_the_model_sees(size, pad: bool) -> None:
    """Paint one token, black out the heat's pixels in a white image, run the real processor: the dark pixels
    must land exactly in that token's 14-px patch of ``pixel_values`` (and pure-padding tokens cover nothing)."""
    hf, proc = build_tiny("llava", attn_implementation="sdpa", seed=0)
    ip = LlavaImageProcessorPil(do_pad=pad, size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    proc.image_processor = ip
    model = load_model(hf, processor=proc, attn_implementation=None, validate=False)
    white = Image.new("RGB", size, (255, 255, 255))
    batch = model.prepare(images=[white], prompts=["describe this image"])
    base = cross_modal_attention(model, batch)
    lay = base.layouts[0].images[0]
    g = lay.grids[0]
    assert (g.rows, g.cols) == (4, 4)
    mean, std = np.asarray(ip.image_mean)[:, None, None], np.asarray(ip.image_std)[:, None, None]
    checked = 0
    for j in range(16):
        rows = torch.zeros_like(base.rows)
        rows[..., int(g.positions[j])] = 1.0
        one = CrossModalAttention(rows, base.query_positions, base.query_valid, base.layers, base.heads,
                                  base.layouts, images=base.images)
        z = _heat(one.heatmap(0, heads="all"))
        painted = np.nan_to_num(z) > 0.5
        pv = proc(images=[Image.fromarray(np.repeat(np.where(painted, 0, 255).astype(np.uint8)[..., None], 3, axis=-1))],
                  text=["<image>"], return_tensors="pt")["pixel_values"][0].numpy()
        dark = 1.0 - (pv * std + mean).mean(0)  # [56, 56] in [0, 1]; padding is the mean colour (≈0.54)
        patches = dark.reshape(4, 14, 4, 14).mean((1, 3))
        r, c = divmod(j, 4)
        if not painted.any():  # a token that shows only padding: its patch is the padding colour
            pad_dark = 1.0 - float(np.mean(ip.image_mean))
            assert pad and np.abs(dark[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] - pad_dark).max() < 0.05
            continue
        checked += 1
        assert patches[r, c] > 0.85, (j, patches.round(2))
        patches[r, c] = 0
        if pad:
            assert patches.max() < 0.6
        else:
            assert (patches < 0.2).all(), (j, patches.round(2))
    assert checked == (8 if pad else 16)


HF_CLASS = {"llava": "Llava", "llava_next": "LlavaNext", "qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL",
            "idefics3": "Idefics3", "gemma3": "Gemma3", "internvl": "InternVL", "paligemma": "PaliGemma"}
ARCHS = [a for a in TINY_ARCHS if f"{HF_CLASS[a]}ForConditionalGeneration" in supported_architectures()]


@pytest.mark.parametrize("arch", ARCHS)
def test_heatmap_paints_each_grid_token_on_its_own_box(arch: str) -> None:
    """Every architecture (crops, dynamic resolution, tiles, thumbnails): painting one grid at a time, each
    token's a* value sits on the pixels of its own box; pixels outside every box stay transparent (NaN)."""
    hf, proc = build_tiny(arch, attn_implementation="sdpa", seed=1)
    model = load_model(hf, processor=proc, attn_implementation=None, validate=False)
    attn = cross_modal_attention(model, model.prepare(images=[tiny_image(60, 40)], prompts=["describe this image"]))
    im = attn.layouts[0].images[0]
    a = attn.aggregate(0, heads="all").numpy()
    start = 0
    for g in im.grids:
        z = _heat(attn.heatmap(0, heads="all", grid=g.name))
        assert z.shape == (40, 60)
        inside = np.zeros_like(z, dtype=bool)
        for v, (x0, y0, x1, y1) in zip(a[start:start + g.rows * g.cols], g.boxes.tolist()):
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                assert z[int((y0 + y1) / 2), int((x0 + x1) / 2)] == pytest.approx(v, rel=1e-6), (g.name, x0, y0)
            inside[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
        assert np.isnan(z[~inside]).all() and not np.isnan(z[inside]).any()
        start += g.rows * g.cols


def test_cli_attention_writes_figures_npz_and_region_share(tmp_path, capsys) -> None:
    img = tmp_path / "scene.png"
    tiny_image(90, 60, seed=4).save(img)
    out = tmp_path / "out"
    box = (10.0, 10.0, 50.0, 40.0)
    rc = main(["attention", "--model", "tiny:llava", "--image", str(img), "--prompt", "what is in this picture",
               "--box", "10,10,50,40", "--query", "instruction", "--heads", "all", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "region share of image attention" in printed
    for name in ("heatmap.png", "heatmap.html", "layer_head_grid.png", "layer_head_grid.html",
                 "small_multiples.png", "attention.npz", "attention.json", "region_share.json"):
        assert (out / name).stat().st_size > 0, name
    with Image.open(out / "heatmap.png") as im:
        assert np.asarray(im.convert("L"), dtype=float).std() > 5.0
    loaded = CrossModalAttention.load(out / "attention.npz")
    # the saved rows are HF eager attention of the same tiny model (build_tiny default seed)
    ref, proc = build_tiny("llava", attn_implementation="eager")
    batch = load_model(ref, processor=proc, validate=False).prepare(images=[str(img)],
                                                                    prompts=["what is in this picture"])
    with torch.no_grad():
        att = torch.stack(ref(**batch.inputs, output_attentions=True).attentions, 1)[0]
    q = loaded.query_positions[0]
    torch.testing.assert_close(loaded.rows[0], att[:, :, q], atol=1e-5, rtol=0)
    share = json.loads((out / "region_share.json").read_text())
    assert share["aggregated"] == pytest.approx(loaded.region_share(0, box).aggregated, rel=1e-9)
    assert f"{share['aggregated']:.4f}" in printed
    assert main(["attention", "--model", "tiny:llava", "--image", str(img), "--prompt", "x", "--box", "1", "2",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("moras-interp attention: error: --box needs 4 numbers")
