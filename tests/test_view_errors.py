"""Out-of-range views: text-only rows of an attention result and steering layers the model does not have."""

from __future__ import annotations

import re

import pytest
import torch

from moras_interp.activations import Direction, steer
from moras_interp.attention import cross_modal_attention
from moras_interp.models.tiny import tiny_image


@pytest.fixture(scope="module")
def mixed(models):
    """Row 0 with an image, row 1 text-only."""
    model = models("llava")
    batch = model.prepare([tiny_image(), None], ["what is in the image ?", "what is a cup ?"])
    return model, cross_modal_attention(model, batch)


@pytest.mark.parametrize("view", ["heatmap", "region_share", "small_multiples", "image_attention", "aggregate"])
def test_text_only_row_is_a_value_error_naming_the_row(mixed, view: str) -> None:
    _, attn = mixed
    call = {"heatmap": lambda e: attn.heatmap(e, box=(0, 0, 20, 20)),
            "region_share": lambda e: attn.region_share(e, box=(0, 0, 20, 20)),
            "small_multiples": lambda e: attn.small_multiples(e),
            "image_attention": lambda e: attn.image_attention(e, 0),
            "aggregate": lambda e: attn.aggregate(e)}[view]
    with pytest.raises(ValueError, match=r"Row 1 \('what is a cup \?'\) has no image tokens"):
        call(1)
    call(0)  # the row with an image still works


def test_image_and_example_indices_out_of_range(mixed) -> None:
    _, attn = mixed
    with pytest.raises(ValueError, match=r"has 1 image\(s\); image=1 is out of range \(0–0\)"):
        attn.region_share(0, box=(0, 0, 20, 20), image=1)
    with pytest.raises(ValueError, match="example=5 is out of range: this result has 2 row"):
        attn.heatmap(5)


def test_text_only_row_has_zero_image_mass(mixed) -> None:
    _, attn = mixed  # what a text-only row does have: no attention on (absent) image tokens
    assert float(attn.image_mass(1).abs().max()) == 0.0 and float(attn.image_mass(0).min()) > 0.0


def test_steer_layers_out_of_range_name_the_valid_range(mixed) -> None:
    model, _ = mixed
    d = Direction(torch.ones(2, model.d_model), layers=[0, 1])
    cases = (([9], "[9] out of range; LlavaForConditionalGeneration has layers 0–1"), ([0, -1], "[-1] out of range"),
             (["1"], "['1'] out of range"))
    for layers, needle in cases:
        with pytest.raises(ValueError, match=re.escape(needle)), steer(model, d, layers=layers):
            pass
    partial = Direction(torch.ones(1, model.d_model), layers=[1])
    with pytest.raises(ValueError, match=re.escape("no vector for layer(s) [0]; it has layers [1]")), \
            steer(model, partial, layers=[0]):
        pass
    with pytest.raises(ValueError, match="dict already names its hooks"), \
            steer(model, {"blocks.0.hook_resid_post": torch.ones(model.d_model)}, layers=[0]):
        pass
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())
    with steer(model, d, layers=[1]):  # a valid layer still steers
        pass
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules()) == hooks_before
