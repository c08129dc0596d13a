"""Tests for moras_interp.viz: rasterisation geometry, figure geometry, exports."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from moras_interp.models.layout import ImageLayout, PatchGrid
from moras_interp.viz import (
    describe,
    difference_map,
    figure_to_matplotlib,
    heatmap_over_image,
    layer_head_grid,
    load_npz,
    paint_boxes,
    region_mask,
    save_html,
    save_npz,
    save_png,
    small_multiples,
    token_map,
    token_region_overlap,
)
from moras_interp.viz import export as export_mod

W, H = 40, 30
QUADRANTS = [(0, 0, 20, 15), (20, 0, 40, 15), (0, 15, 20, 30), (20, 15, 40, 30)]


def _grid(name, rows, cols, boxes, start=0):
    n = rows * cols
    return PatchGrid(name, rows, cols, torch.arange(start, start + n), torch.tensor(boxes, dtype=torch.float32))


def _layout(grids, size=(W, H), separators=()):
    pos = torch.cat([g.positions for g in grids] + [torch.tensor(separators, dtype=torch.long)])
    return ImageLayout(torch.sort(pos).values, grids, size, torch.tensor(separators, dtype=torch.long))


def _image(size=(W, H), color=(0, 200, 0)):
    return Image.new("RGB", size, color)


# ----------------------------------------------------------------------------------------- raster


def test_token_map_quadrants_exact():
    lay = _layout([_grid("image", 2, 2, QUADRANTS)])
    m = token_map(torch.tensor([1.0, 2.0, 3.0, 4.0]), lay)
    assert m.shape == (H, W)
    assert not np.isnan(m).any()
    assert (m[:15, :20] == 1).all() and (m[:15, 20:] == 2).all()
    assert (m[15:, :20] == 3).all() and (m[15:, 20:] == 4).all()


def test_token_map_fractional_boxes_area_weighted():
    # 3x2 image, two tokens split at x = 1.5 and a third straddling y = 0.5 .. 2 in column 2
    boxes = [(0, 0, 1.5, 1), (1.5, 0, 3, 1), (0.5, 0.5, 2.0, 2.0)]
    lay = _layout([_grid("g", 1, 3, boxes)], size=(3, 2))
    m = token_map(torch.tensor([1.0, 3.0, 5.0]), lay)
    # pixel (0,0): token0 area 1 -> 1 ... plus token2 overlap 0.5*0.5
    assert m[0, 0] == pytest.approx((1 * 1 + 5 * 0.25) / 1.25)
    # pixel (0,1): token0 0.5, token1 0.5, token2 1*0.5
    assert m[0, 1] == pytest.approx((1 * 0.5 + 3 * 0.5 + 5 * 0.5) / 1.5)
    assert m[0, 2] == pytest.approx(3.0)
    assert m[1, 0] == pytest.approx(5.0) and m[1, 1] == pytest.approx(5.0)
    assert np.isnan(m[1, 2])  # no token covers it


def test_paint_boxes_mass_and_max():
    boxes = np.array([[0, 0, 1.5, 1], [1.5, 0, 3, 1]])
    mass = paint_boxes([3.0, 6.0], boxes, (3, 1), reduce="mass")
    np.testing.assert_allclose(mass[0], [2.0, 1.0 + 2.0, 4.0])
    assert np.nansum(mass) == pytest.approx(9.0)
    mx = paint_boxes([3.0, 6.0], boxes, (3, 1), reduce="max")
    np.testing.assert_allclose(mx[0], [3.0, 6.0, 6.0])
    with pytest.raises(ValueError):
        paint_boxes([1.0], boxes[:1], (3, 1), reduce="median")


def test_token_map_nan_where_uncovered_and_empty_boxes_skipped():
    boxes = [(0, 0, 20, 30), (40, 0, 40, 30)]  # second token covers only padding (empty box)
    lay = _layout([_grid("image", 1, 2, boxes)])
    m = token_map(torch.tensor([7.0, 100.0]), lay)
    assert (m[:, :20] == 7).all()
    assert np.isnan(m[:, 20:]).all()


def test_token_map_overlapping_grids_average_and_select():
    base = _grid("base", 1, 1, [(0, 0, W, H)], start=0)
    tiles = [_grid(f"tile r{i // 2} c{i % 2}", 1, 1, [q], start=1 + i) for i, q in enumerate(QUADRANTS)]
    lay = _layout([base, *tiles])
    scores = torch.tensor([10.0, 0.0, 2.0, 4.0, 6.0])
    avg = token_map(scores, lay)
    assert (avg[:15, :20] == 5).all() and (avg[:15, 20:] == 6).all()
    assert (avg[15:, :20] == 7).all() and (avg[15:, 20:] == 8).all()
    assert (token_map(scores, lay, grid="base") == 10).all()
    assert (token_map(scores, lay, grid=0) == 10).all()
    only_tiles = token_map(scores, lay, grid="tile")  # name prefix selects every tile
    assert (only_tiles[15:, 20:] == 6).all() and (only_tiles[:15, :20] == 0).all()
    one_tile = token_map(scores, lay, grid="tile r0 c1")
    assert (one_tile[:15, 20:] == 2).all() and np.isnan(one_tile[15:, :]).all()
    with pytest.raises(KeyError):
        token_map(scores, lay, grid="thumbnail")


def test_token_map_accepts_scores_over_all_image_positions():
    # grid positions 0..3, separator at position 2 -> grid tokens at 0, 1, 3, 4
    g = PatchGrid("image", 2, 2, torch.tensor([0, 1, 3, 4]), torch.tensor(QUADRANTS, dtype=torch.float32))
    lay = ImageLayout(torch.arange(5), [g], (W, H), torch.tensor([2]))
    m = token_map(torch.tensor([1.0, 2.0, 99.0, 3.0, 4.0]), lay)
    assert m[0, 0] == 1 and m[0, 39] == 2 and m[29, 0] == 3 and m[29, 39] == 4
    with pytest.raises(ValueError):
        token_map(torch.ones(3), lay)


def test_token_region_overlap_hand_computed():
    mask = region_mask((4, 4), box=(1, 1, 3, 3))
    assert mask.sum() == 4 and mask[1:3, 1:3].all()
    boxes = torch.tensor([
        [0, 0, 2, 2],          # 1 of 4 px inside -> 0.25
        [1, 1, 3, 3],          # exactly the region -> 1
        [0.5, 0, 1.5, 1],      # row 0 only -> 0
        [0.5, 0.5, 1.5, 1.5],  # [1,1.5)^2 inside = 0.25 of area 1
        [2.5, 1.0, 4.5, 2.0],  # [2.5,3) inside = 0.5 of area 2 (half outside the image) -> 0.25
        [3, 3, 3, 4],          # empty -> 0
    ])
    frac = token_region_overlap(boxes, mask)
    assert frac.dtype == torch.float32
    torch.testing.assert_close(frac, torch.tensor([0.25, 1.0, 0.0, 0.25, 0.25, 0.0]))


def test_region_mask_box_and_mask_intersect():
    m = np.zeros((4, 4), dtype=bool)
    m[:, :2] = True
    r = region_mask((4, 4), box=(1, 0, 4, 4), mask=m)
    assert r.sum() == 4 and r[:, 1].all()
    assert region_mask((4, 3)).shape == (3, 4) and region_mask((4, 3)).all()
    with pytest.raises(ValueError):
        region_mask((4, 4), mask=np.ones((3, 3)))


# ---------------------------------------------------------------------------------------- figures


def _extent(trace, n, axis):
    start, step = getattr(trace, axis + "0"), getattr(trace, "d" + axis)
    return start - step / 2, start + (n - 0.5) * step


def test_heatmap_over_image_exact_pixel_geometry():
    img = _image()
    heat = np.random.default_rng(0).random((H, W))
    box = (5, 6, 17, 21)
    fig = heatmap_over_image(img, heat, title="t", box=box)
    im_tr, heat_tr = fig.data
    assert im_tr.type == "image" and heat_tr.type == "heatmap"
    src = Image.open(io.BytesIO(base64.b64decode(im_tr.source.split(",", 1)[1])))
    assert src.size == (W, H)
    assert _extent(im_tr, W, "x") == (0, W) and _extent(im_tr, H, "y") == (0, H)
    assert _extent(heat_tr, W, "x") == (0, W) and _extent(heat_tr, H, "y") == (0, H)
    assert np.asarray(heat_tr.z).shape == (H, W)
    assert tuple(fig.layout.xaxis.range) == (0, W) and tuple(fig.layout.yaxis.range) == (H, 0)
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.scaleratio == 1
    (shape,) = fig.layout.shapes
    assert (shape.x0, shape.y0, shape.x1, shape.y1) == box and shape.xref == "x"
    assert fig.layout.title.text == "t" and heat_tr.opacity == pytest.approx(0.55)
    # a coarser heat is stretched over the same pixel extent
    coarse = heatmap_over_image(img, heat[::3, ::4][:10, :10])
    assert _extent(coarse.data[1], 10, "x") == (0, W) and _extent(coarse.data[1], 10, "y") == (0, H)


def test_difference_small_multiples_layer_head_grid():
    a, b = np.zeros((H, W)), np.zeros((H, W))
    a[:5] = 0.3
    b[-5:] = 0.9
    d = difference_map(_image(), a, b, title="d").data[1]
    assert d.zmid == 0 and d.zmin == pytest.approx(-0.9) and d.zmax == pytest.approx(0.9)
    sm = small_multiples([a, b, a + b], _image(), ["L0", "L1", "L2"], cols=2)
    heats = [t for t in sm.data if t.type == "heatmap"]
    assert len(heats) == 3 and all(t.zmin == 0 and t.zmax == pytest.approx(0.9) for t in heats)
    assert [t.showscale for t in heats] == [True, False, False]
    assert [a.text for a in sm.layout.annotations] == ["L0", "L1", "L2"]
    assert sm.layout.yaxis3.scaleanchor == "x3" and tuple(sm.layout.yaxis3.range) == (H, 0)
    g = layer_head_grid(torch.rand(6, 8), title="g", highlight=[(2, 3)])
    assert np.asarray(g.data[0].z).shape == (6, 8) and tuple(g.layout.yaxis.range) == (5.5, -0.5)
    assert g.layout.shapes[0].x0 == 2.5 and g.layout.shapes[0].y0 == 1.5


def test_describe():
    s = describe("llava-hf/llava-1.5-7b-hf", range(8, 16), [(8, 3), (9, 1)])
    assert s == "llava-hf/llava-1.5-7b-hf · layers 8–15 · 2 heads: L8H3, L9H1"
    assert describe("m", [0, 1, 2, 5], "top-visual") == "m · layers 0–2, 5 · heads top-visual"
    assert describe("m", 3) == "m · layer 3"


def test_matplotlib_renderer_keeps_pixel_geometry():
    img = Image.new("RGB", (W, H), (0, 0, 0))
    heat = np.full((H, W), np.nan)
    heat[10:20, 10:20] = 1.0
    fig = heatmap_over_image(img, heat, colorscale=[[0, "red"], [1, "red"]], opacity=1.0)
    mfig = figure_to_matplotlib(fig.to_dict(), width=400, height=300)  # dict form with typed arrays
    mfig.canvas.draw()
    rgb = np.asarray(mfig.canvas.buffer_rgba())[..., :3]
    ax = mfig.axes[0]

    def at(x, y):
        px, py = ax.transData.transform((x, y))
        return rgb[int(np.rint(rgb.shape[0] - py)), int(np.rint(px))]

    for x, y in [(15, 15), (10.5, 10.5), (19.5, 19.5)]:
        assert tuple(at(x, y)) == (255, 0, 0), (x, y)
    for x, y in [(9.5, 15), (20.5, 15), (15, 9.5), (15, 20.5), (35, 25)]:
        assert tuple(at(x, y)) == (0, 0, 0), (x, y)


# ----------------------------------------------------------------------------------------- export


def _demo_fig():
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[:, :] = (0, 200, 0)
    heat = np.full((H, W), np.nan)
    heat[:15, :20] = np.linspace(0, 1, 20)[None, :]
    return heatmap_over_image(Image.fromarray(img), heat, title="demo", box=(20, 15, 40, 30))


@pytest.mark.parametrize(("w", "h", "scale"), [(320, 240, 1.0), (300, 200, 2.0)])
def test_save_png_without_browser(tmp_path, monkeypatch, w, h, scale):
    monkeypatch.setattr(export_mod, "kaleido_available", lambda: False)
    out = save_png(_demo_fig(), tmp_path / "f.png", width=w, height=h, scale=scale)
    with Image.open(out) as im:
        assert abs(im.width - w * scale) <= 1 and abs(im.height - h * scale) <= 1
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.std() > 20
    green = (np.abs(rgb - [0, 200, 0]).sum(-1) < 10).sum()
    assert green > 50  # uncovered image pixels
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    inferno_yellow = ((r > 200) & (g > 120) & (g < 250) & (b < 160)).sum()
    inferno_purple = ((r > b) & (b > g) & (b > 40) & (g < 40)).sum()
    assert inferno_yellow > 10 and inferno_purple > 10  # heat colours (colourbar, overlay)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]  # no temp files left


def test_save_png_with_a_browser_does_not_hide_a_kaleido_failure(tmp_path, monkeypatch):
    """The matplotlib renderer is a fallback for machines WITHOUT a browser; a failing kaleido is an error."""
    monkeypatch.setattr(export_mod, "kaleido_available", lambda: True)

    def boom(*a, **k):
        raise RuntimeError("no chrome")

    monkeypatch.setattr(export_mod, "_kaleido_png", boom)
    for engine in ("auto", "kaleido"):
        with pytest.raises(RuntimeError, match="no chrome"):
            save_png(_demo_fig(), tmp_path / "g.png", engine=engine)
    assert not (tmp_path / "g.png").exists()
    monkeypatch.setattr(export_mod, "kaleido_available", lambda: False)
    out = save_png(_demo_fig(), tmp_path / "f.png", width=400, height=300)  # no browser: the fallback
    assert Image.open(out).size == (400, 300)


def test_save_html(tmp_path):
    p = save_html(_demo_fig(), tmp_path / "sub" / "f.html")
    text = p.read_text()
    assert "plotly" in text.lower() and len(text) > 1_000_000  # plotly.js inlined
    cdn = save_html(_demo_fig(), tmp_path / "c.html", include_plotlyjs="cdn").read_text()
    assert "cdn.plot.ly" in cdn and len(cdn) < len(text)
    d = save_html(_demo_fig(), tmp_path / "d" / "f.html", include_plotlyjs="directory").read_text()
    assert 'src="plotly.min.js"' in d and (tmp_path / "d" / "plotly.min.js").stat().st_size > 1_000_000
    with pytest.raises(ValueError, match="include_plotlyjs must be one of"):
        save_html(_demo_fig(), tmp_path / "x.html", include_plotlyjs="inline")


def test_npz_round_trip_and_no_pickle(tmp_path):
    arrays = {"heat": np.random.default_rng(1).random((3, 4)).astype(np.float32),
              "ids": np.arange(5), "mask": np.array([True, False]),
              "t": torch.ones(2, 2, dtype=torch.bfloat16), "file": np.zeros(1)}
    meta = {"model": "m", "layer": np.int64(3), "box": (1, 2, 3, 4), "scale": np.float32(0.5)}
    p = save_npz(tmp_path / "a.npz", arrays, meta)
    assert p.with_suffix(".json").exists()
    got, got_meta = load_npz(p)
    assert set(got) == set(arrays)
    np.testing.assert_array_equal(got["heat"], arrays["heat"])
    np.testing.assert_array_equal(got["ids"], arrays["ids"])
    np.testing.assert_array_equal(got["mask"], arrays["mask"])
    assert got["t"].dtype == np.float32 and (got["t"] == 1).all()
    assert got_meta == {"model": "m", "layer": 3, "box": [1, 2, 3, 4], "scale": 0.5}

    with pytest.raises(TypeError):
        save_npz(tmp_path / "b.npz", {"x": np.array([{"a": 1}], dtype=object)}, {})
    evil = tmp_path / "evil.npz"
    np.savez(evil, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError):
        load_npz(evil)
