"""The paper's diagnoses on the shipped organism, and the analysis helpers against plain HF references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import moras_interp as mi
from moras_interp.organisms import analysis, tasks


@pytest.fixture(scope="module")
def toy() -> mi.MLLM:
    return mi.load_model("toy-llava")


@pytest.fixture(scope="module")
def queries() -> list[tasks.Query]:
    return tasks.harmful_image_queries(40, seed=3) + tasks.benign_image_queries(40, seed=3)


def test_last_token_states_equal_hf_hidden_states(toy: mi.MLLM, queries: list[tasks.Query]) -> None:
    qs = queries[:3] + queries[-2:]
    x = analysis.last_token_states(toy, [q.image for q in qs], [q.question for q in qs], batch_size=2)
    for i, q in enumerate(qs):  # batch size 1, no padding: an independent path
        enc = toy.processor(images=q.image, text=toy.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.question}]}],
            add_generation_prompt=True), return_tensors="pt")
        got: list[torch.Tensor] = []
        layers = toy.hf.model.language_model.layers
        hs = [m.register_forward_hook(lambda m, a, o, got=got: got.append((o[0] if isinstance(o, tuple) else o)[0, -1]))
              for m in layers]
        try:
            with torch.no_grad():
                toy.hf(**enc)
        finally:
            for h in hs:
                h.remove()
        assert torch.allclose(x[i], torch.stack(got).double(), atol=1e-5)


def test_attention_study_region_share_matches_hand_computation(toy: mi.MLLM, queries: list[tasks.Query]) -> None:
    q = queries[0]
    df = analysis.attention_study(toy, [q], contexts=["the image shows a gun ."], threshold=0.2)
    enc = toy.processor(images=q.image, text=toy.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.question}]}],
        add_generation_prompt=True), return_tensors="pt")
    with torch.no_grad():
        att = toy.hf(**enc, output_attentions=True).attentions  # per layer [1, H, q, k]
    img = (enc["input_ids"][0] == toy.hf.config.image_token_id).nonzero().flatten()
    # 48 px image, patch 8 → 6×6 tokens, each covering an 8×8 pixel cell (no resize/crop for a 48 px scene)
    x0, y0, x1, y1 = q.box
    frac = np.zeros(36)
    for j in range(36):
        r, c = divmod(j, 6)
        ox = max(0, min(x1, 8 * c + 8) - max(x0, 8 * c))
        oy = max(0, min(y1, 8 * r + 8) - max(y0, 8 * r))
        frac[j] = ox * oy / 64
    area = (x1 - x0) * (y1 - y0) / 48**2
    plain = df[(df.condition == "plain") & (df.layer != "H_n")].set_index("layer")
    for l, a in enumerate(att):
        rows = a[0, :, -1, img].double().numpy()  # [H, 36]
        share = float(np.mean((rows * frac).sum(-1) / rows.sum(-1)))
        assert plain.loc[l, "share"] == pytest.approx(share, abs=1e-6)
        assert plain.loc[l, "ratio"] == pytest.approx(share / area, rel=1e-6)


def test_organism_shows_the_papers_diagnosis(toy: mi.MLLM, queries: list[tasks.Query]) -> None:
    ctx = analysis.visual_contexts(toy, [q.image for q in queries], batch_size=20)
    att = analysis.attention_summary(analysis.attention_study(toy, queries[:40], contexts=ctx[:40], batch_size=20))
    # plain questions: the visual head set attends to the hazard no better than uniform; with context it does
    assert att.loc["H_n", "ratio (plain)"] < 1.2
    assert att.loc["H_n", "ratio (reformulated)"] > 1.3 * att.loc["H_n", "ratio (plain)"]
    sep = analysis.separability_summary(analysis.separability_study(toy, queries, contexts=ctx, batch_size=20))
    assert (sep["reformulated"] > 2 * sep["plain"]).all()


def test_separability_study_needs_both_classes(toy: mi.MLLM, queries: list[tasks.Query]) -> None:
    with pytest.raises(ValueError, match="both unsafe and safe"):
        analysis.separability_study(toy, queries[:5], contexts=[""] * 5)
