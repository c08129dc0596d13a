"""Head sets, a*, region share, compare and NPZ round trip on a crafted layout, against numpy by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from moras_interp.attention import CrossModalAttention
from moras_interp.models.layout import ImageLayout, PatchGrid, TokenLayout

W, H = 60, 40
# a 2x3 grid over a 60x40 image laid out as by a pad-to-square resize: the top row covers only 10 px of image,
# the last token of the bottom row covers padding only (empty box). Fractional edges on purpose.
BOXES = np.array([
    [0.0, 0.0, 20.5, 10.0], [20.5, 0.0, 41.0, 10.0], [41.0, 0.0, 60.0, 10.0],
    [0.0, 10.0, 20.5, 40.0], [20.5, 10.0, 41.0, 40.0], [41.0, 40.0, 41.0, 40.0],
])
SEQ = 12
IMG_POS = np.array([3, 4, 5, 6, 7, 8])  # grid tokens in raster order
SEP_POS = 9  # an extra image token covering no patch (like LLaVA-NeXT's newline)
L, NH, R = 2, 3, 2


def _layout() -> TokenLayout:
    grid = PatchGrid("image", 2, 3, torch.tensor(IMG_POS), torch.tensor(BOXES, dtype=torch.float32))
    im = ImageLayout(torch.tensor([*IMG_POS, SEP_POS]), [grid], (W, H), torch.tensor([SEP_POS]))
    return TokenLayout(SEQ, 1, [im], torch.tensor([10, 11]), 11)


def _rows(seed: int) -> np.ndarray:
    """float [1, L, H, R, SEQ] random rows that sum to 1 over non-padding keys."""
    rng = np.random.default_rng(seed)
    x = rng.random((1, L, NH, R, SEQ)) ** 3
    x[..., 0] = 0.0
    return (x / x.sum(-1, keepdims=True)).astype(np.float32)


def _attn(rows: np.ndarray, valid=(True, False)) -> CrossModalAttention:
    return CrossModalAttention(rows=torch.from_numpy(rows), query_positions=torch.tensor([[10, 11]]),
                               query_valid=torch.tensor([list(valid)]), layers=[4, 7], heads=[0, 1, 2],
                               layouts=[_layout()], model_id="crafted", prompts=["what is here"],
                               images=[[Image.new("RGB", (W, H), (90, 20, 200))]], query="instruction")


def _overlap(box: tuple[float, float, float, float]) -> np.ndarray:
    """Hand-written: area of each token box inside ``box`` / token box area (0 for empty boxes)."""
    out = np.zeros(len(BOXES))
    for i, (a0, b0, a1, b1) in enumerate(BOXES):
        area = (a1 - a0) * (b1 - b0)
        if area <= 0:
            continue
        iw = max(0.0, min(a1, box[2]) - max(a0, box[0]))
        ih = max(0.0, min(b1, box[3]) - max(b0, box[1]))
        out[i] = iw * ih / area
    return out


def _np_att(rows: np.ndarray) -> np.ndarray:
    """[L, H, V] attention on grid tokens, mean over the valid query row (row 0 only)."""
    return rows[0][:, :, :1][..., IMG_POS].mean(2)


def test_region_share_box_against_hand_computation() -> None:
    rows = _rows(0)
    attn = _attn(rows)
    box = (10.0, 5.0, 33.0, 30.0)
    ov = _overlap(box)
    shown = np.array([1, 1, 1, 1, 1, 0.0])
    att = _np_att(rows)
    want_per_head = (att * ov).sum(-1) / (att * shown).sum(-1)
    rs = attn.region_share(0, box)
    np.testing.assert_allclose(rs.per_head.numpy(), want_per_head, rtol=1e-6)
    layer_mean = att.mean(1)
    np.testing.assert_allclose(rs.per_layer.numpy(), (layer_mean * ov).sum(-1) / (layer_mean * shown).sum(-1),
                               rtol=1e-6)
    agg = att.reshape(-1, 6).mean(0)  # heads="all": mean over every (layer, head)
    want = (agg * ov).sum() / (agg * shown).sum()
    assert rs.aggregated == pytest.approx(want, rel=1e-6)
    assert rs.area_share == pytest.approx(23 * 25 / (W * H))
    assert rs.ratio == pytest.approx(want / (23 * 25 / (W * H)), rel=1e-6)


def test_region_share_mask_matches_box_and_irregular_mask() -> None:
    rows = _rows(1)
    attn = _attn(rows)
    mask = np.zeros((H, W), dtype=bool)
    mask[5:30, 10:33] = True
    a, b = attn.region_share(0, mask=mask), attn.region_share(0, box=(10, 5, 33, 30))
    assert a.aggregated == pytest.approx(b.aggregated, rel=1e-9) and a.area_share == pytest.approx(b.area_share)
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    disc = (xx - 30) ** 2 + (yy - 22) ** 2 < 12 ** 2
    # hand computation for a pixel mask: count mask pixels in each box, weighting the half-pixel edge at 20.5/41
    cover = np.zeros(len(BOXES))
    for i, (a0, b0, a1, b1) in enumerate(BOXES):
        area = (a1 - a0) * (b1 - b0)
        if area <= 0:
            continue
        wx = np.clip(np.minimum(a1, np.arange(W) + 1) - np.maximum(a0, np.arange(W)), 0, 1)
        wy = np.clip(np.minimum(b1, np.arange(H) + 1) - np.maximum(b0, np.arange(H)), 0, 1)
        cover[i] = (np.outer(wy, wx) * disc).sum() / area
    att = _np_att(rows)
    agg = att.reshape(-1, 6).mean(0)
    shown = np.array([1, 1, 1, 1, 1, 0.0])
    rs = attn.region_share(0, mask=disc)
    assert rs.aggregated == pytest.approx((agg * cover).sum() / (agg * shown).sum(), rel=1e-9)
    assert rs.area_share == pytest.approx(disc.mean())


def test_region_share_full_cover_and_errors() -> None:
    rows = np.zeros((1, L, NH, R, SEQ), dtype=np.float32)
    rows[..., IMG_POS[[0, 1, 3, 4]]] = 0.25  # all attention on the four tokens inside x < 41
    attn = _attn(rows)
    rs = attn.region_share(0, box=(0, 0, 41, 40))
    assert rs.aggregated == pytest.approx(1.0) and rs.ratio == pytest.approx(1 / (41 / 60))
    with pytest.raises(ValueError, match="exactly one"):
        attn.region_share(0)
    with pytest.raises(ValueError, match="empty"):
        attn.region_share(0, box=(5, 5, 5, 9))


def test_head_sets_and_aggregate_against_numpy() -> None:
    rows = _rows(2)
    attn = _attn(rows, valid=(True, True))
    img_all = [*IMG_POS, SEP_POS]
    mass = rows[0][..., img_all].sum(-1).mean(-1)  # [L, H] over both valid rows, separator included
    order = np.argsort(-mass, axis=None)
    want_top = [(attn.layers[i // NH], attn.heads[i % NH]) for i in order[:4]]
    assert attn.head_set(top_k=4) == want_top
    np.testing.assert_allclose(attn.image_mass(0).numpy(), mass, rtol=1e-6)
    thr = float(np.median(mass))
    want_thr = [(attn.layers[i // NH], attn.heads[i % NH]) for i in order if mass.flat[i] > thr]
    assert attn.head_set(threshold=thr) == want_thr
    assert attn.head_set(top_k=2, layers=[7]) == [(7, int(h)) for h in np.argsort(-mass[1])[:2]]
    # a* = mean over the head set (and valid query rows) of the attention on each grid token
    att = rows[0][..., IMG_POS].mean(2)  # [L, H, V]
    want_a = np.mean([att[attn.layers.index(l), attn.heads.index(h)] for l, h in want_thr], axis=0)
    np.testing.assert_allclose(attn.aggregate(0, heads=thr).numpy(), want_a, rtol=1e-6)
    np.testing.assert_allclose(attn.aggregate(0, heads=[2], layers=[4]).numpy(), att[0, 2], rtol=1e-6)
    np.testing.assert_allclose(attn.aggregate(0, heads=[(7, 1), (4, 0)]).numpy(), (att[1, 1] + att[0, 0]) / 2,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="No head has image-attention mass above"):
        attn.aggregate(0, heads=0.999)
    with pytest.raises(ValueError, match="not traced"):
        attn.resolve_heads("all", layers=[5])
    with pytest.raises(ValueError, match="exactly one"):
        attn.head_set()


def test_compare_difference_and_share_change() -> None:
    ra, rb = _rows(3), _rows(4)
    a, b = _attn(ra), _attn(rb)
    pairs = [(4, 0), (7, 2)]
    box = (0.0, 0.0, 30.0, 40.0)
    out = a.compare(b, heads=pairs, box=box)
    att_a, att_b = _np_att(ra), _np_att(rb)
    agg_a = (att_a[0, 0] + att_a[1, 2]) / 2
    agg_b = (att_b[0, 0] + att_b[1, 2]) / 2
    np.testing.assert_allclose(out["difference"].numpy(), agg_b - agg_a, rtol=1e-5, atol=1e-8)
    ov, shown = _overlap(box), np.array([1, 1, 1, 1, 1, 0.0])
    sa, sb = (agg_a * ov).sum() / (agg_a * shown).sum(), (agg_b * ov).sum() / (agg_b * shown).sum()
    assert out["share_a"] == pytest.approx(sa, rel=1e-6) and out["share_b"] == pytest.approx(sb, rel=1e-6)
    assert out["share_change"] == pytest.approx(sb - sa, rel=1e-5)


def test_npz_json_round_trip(tmp_path) -> None:
    attn = _attn(_rows(5))
    path = attn.save(tmp_path / "attn.npz")
    assert path.exists() and (tmp_path / "attn.json").exists()
    back = CrossModalAttention.load(path)
    assert torch.equal(back.rows, attn.rows) and torch.equal(back.query_valid, attn.query_valid)
    assert torch.equal(back.query_positions, attn.query_positions)
    assert (back.layers, back.heads, back.model_id, back.prompts, back.query) == (
        attn.layers, attn.heads, attn.model_id, attn.prompts, attn.query)
    assert back.layouts[0].to_dict() == attn.layouts[0].to_dict()
    assert np.array_equal(np.asarray(back.images[0][0]), np.asarray(attn.images[0][0]))
    assert back.region_share(0, (3, 3, 30, 30)).aggregated == attn.region_share(0, (3, 3, 30, 30)).aggregated
    (tmp_path / "attn.json").unlink()
    with pytest.raises(FileNotFoundError, match="metadata"):
        CrossModalAttention.load(path)
