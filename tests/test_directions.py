"""Directions: diff of means, paired PCA, logistic probe, registry, safetensors round trip."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from moras_interp.activations.directions import (
    DIRECTION_METHODS,
    Direction,
    diff_of_means,
    logistic_probe,
    make_direction,
    paired_difference_pcs,
    pca_of_paired_differences,
    register_direction_method,
)


def two_classes(L=3, n_a=20, n_b=25, d=8, shift=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(L, n_a, d, generator=g), torch.randn(L, n_b, d, generator=g)
    a[..., 1] += shift
    return a, b


def test_diff_of_means_matches_manual_mean():
    a, b = two_classes()
    raw = diff_of_means(a, b, normalise=False, layers=[4, 5, 6], hook="blocks.{l}.hook_resid_pre")
    manual = torch.stack([a[l].double().mean(0) - b[l].double().mean(0) for l in range(3)]).float()
    assert torch.allclose(raw.vectors, manual, atol=1e-6)
    assert raw.vectors.dtype == torch.float32 and raw.layers == [4, 5, 6] and raw.method == "diff_of_means"
    assert not raw.normalised and raw.provenance["n_a"] == 20 and raw.provenance["n_b"] == 25
    unit = diff_of_means(a, b)
    assert unit.normalised and unit.layers == [0, 1, 2]
    assert torch.allclose(unit.vectors.norm(dim=-1), torch.ones(3))
    assert torch.allclose(unit.vectors, manual / manual.norm(dim=-1, keepdim=True), atol=1e-6)
    single = diff_of_means(a[0], b[0], normalise=False)           # [n, d] -> one layer
    assert single.vectors.shape == (1, 8) and torch.allclose(single.vectors[0], manual[0], atol=1e-6)
    assert raw.hook_name(5) == "blocks.5.hook_resid_pre"


def test_input_errors():
    a, b = two_classes()
    with pytest.raises(ValueError, match="class b has 0 examples"):
        diff_of_means(a, b[:, :0])
    with pytest.raises(ValueError, match=r"d=8.*d=7"):
        diff_of_means(a, b[..., :7])
    bad = a.clone()
    bad[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"NaN/Inf at class a \[layer, example, feature\] = \[1, 2, 3\]"):
        diff_of_means(bad, b)
    with pytest.raises(ValueError, match="2 layers given for 3 vectors"):
        diff_of_means(a, b, layers=[0, 1])


def test_direction_save_load_round_trip(tmp_path):
    a, b = two_classes()
    prov = {"model_id": "toy", "dataset_fingerprint": "abc", "positions": "last"}
    d = diff_of_means(a, b, layers=[1, 3, 5], normalise=False, provenance=prov)
    path = d.save(tmp_path / "sub" / "dir.safetensors")
    assert set(load_file(str(path))) == {"vectors"}
    with safe_open(str(path), framework="pt") as f:
        json.loads(f.metadata()["moras_interp.direction"])
    back = Direction.load(path)
    assert torch.equal(back.vectors, d.vectors)
    assert (back.layers, back.hook, back.method, back.normalised) == (d.layers, d.hook, d.method, d.normalised)
    assert back.provenance == d.provenance and back.provenance["model_id"] == "toy" and "created" in back.provenance
    assert [p.name for p in path.parent.iterdir()] == ["dir.safetensors"]          # no temp files left
    with pytest.raises(TypeError, match="JSON"):
        Direction(torch.zeros(1, 2), [0], provenance={"x": object()}).save(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_for_layer_and_project():
    d = Direction(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), layers=[7, 9])
    assert torch.equal(d.for_layer(9), torch.tensor([0.0, 2.0]))
    acts = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])                  # [1, 2, d]
    assert torch.equal(d.project(acts, 7), torch.tensor([[7.0, 6.0]]))
    assert torch.allclose(d.project(acts, 7, unit=True), torch.tensor([[1.4, 1.2]]))
    with pytest.raises(KeyError, match="layers \\[7, 9\\]"):
        d.for_layer(8)
    with pytest.raises(ValueError, match="d=3"):
        d.project(torch.zeros(3), 7)
    with pytest.raises(ValueError, match="\\{l\\}"):
        Direction(torch.zeros(1, 2), [0], hook="blocks.0.hook_resid_post")


def test_pca_of_paired_differences_recovers_shift_and_aligns_sign():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(2, 40, 10, generator=g)
    axis = torch.zeros(10)
    axis[4] = 1.0
    diffs = 0.2 * torch.randn(2, 40, 10, generator=g) + 3.0 * axis
    diffs[1] = 0.2 * torch.randn(40, 10, generator=g) - 3.0 * axis   # layer 1: shift the other way
    a = b + diffs
    d = pca_of_paired_differences(a, b, k=3)
    assert d.method == "pca" and d.normalised
    assert d.vectors[0] @ axis > 0.99 and d.vectors[1] @ axis < -0.99
    ratio = d.provenance["explained_variance_ratio"]
    assert len(ratio) == 2 and len(ratio[0]) == 3 and ratio[0][0] > 0.9
    comps, r = paired_difference_pcs(a, b, k=2, center=True)
    assert comps.shape == (2, 2, 10) and r.shape == (2, 2)
    assert torch.allclose(comps.norm(dim=-1), torch.ones(2, 2, dtype=torch.float64))
    raw = pca_of_paired_differences(a, b, normalise=False)
    assert raw.vectors[0].norm() == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError, match="same n per class"):
        pca_of_paired_differences(a, b[:, :30])
    with pytest.raises(ValueError, match="k must be in"):
        pca_of_paired_differences(a, b, k=11)


def test_logistic_probe_separates_and_is_deterministic():
    a, b = two_classes(L=2, n_a=30, n_b=30, d=6, shift=8.0)
    a = a * torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 50.0])            # a badly scaled nuisance feature
    b = b * torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 50.0])
    p1 = logistic_probe(a, b, l2=1e-2, steps=100)
    p2 = logistic_probe(a, b, l2=1e-2, steps=100)
    assert torch.equal(p1.vectors, p2.vectors)
    assert p1.method == "probe" and p1.normalised
    assert all(acc == 1.0 for acc in p1.provenance["train_accuracy"])
    assert abs(p1.vectors[0, 1]) == p1.vectors[0].abs().max() and p1.vectors[0, 1] > 0
    raw = logistic_probe(a, b, normalise=False, steps=100)
    for l in range(2):                                               # raw-space weights reproduce the labels
        logits = torch.cat([a[l], b[l]]) @ raw.vectors[l] + raw.provenance["probe_bias"][l]
        assert (logits[:30] > 0).all() and (logits[30:] < 0).all()
    with pytest.raises(ValueError, match="l2 >= 0"):
        logistic_probe(a, b, l2=-1.0)


def test_registry_dispatch_and_plugins():
    a, b = two_classes()
    assert set(DIRECTION_METHODS) >= {"diff_of_means", "pca", "probe"}
    d = make_direction("diff_of_means", a, b, normalise=False)
    assert torch.equal(d.vectors, diff_of_means(a, b, normalise=False).vectors)
    assert make_direction("pca", a[:, :20], b[:, :20]).method == "pca"
    with pytest.raises(ValueError, match=r"unknown direction method 'nope'.*diff_of_means"):
        make_direction("nope", a, b)

    def first_example(acts_a, acts_b, **kw):
        return Direction(acts_a[:, 0] - acts_b[:, 0], layers=list(range(acts_a.shape[0])), method="first")

    register_direction_method("first_test", first_example)
    try:
        assert make_direction("first_test", a, b).method == "first"
        with pytest.raises(ValueError, match="already registered"):
            register_direction_method("first_test", first_example)
    finally:
        DIRECTION_METHODS.pop("first_test")
