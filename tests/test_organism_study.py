"""organisms.study / honest_card pieces that need no model: the random-box control and the generated text."""

from __future__ import annotations

import numpy as np

from moras_interp.eval.stats import paired_bootstrap_diff, rate_of
from moras_interp.organisms import tasks
from moras_interp.organisms.honest_card import can_cannot, moras_section
from moras_interp.organisms.study import pooled, random_box_queries


def test_random_box_has_the_same_size_and_avoids_every_object() -> None:
    qs = tasks.harmful_image_queries(30, seed=3)
    moved = random_box_queries(qs, seed=1)
    for q, m in zip(qs, moved):
        w, h = q.box[2] - q.box[0], q.box[3] - q.box[1]
        assert (m.box[2] - m.box[0], m.box[3] - m.box[1]) == (w, h)
        for o in q.scene.objects:  # no overlap with any object's box
            x0, y0, x1, y1 = o.box
            assert m.box[2] <= x0 or m.box[0] >= x1 or m.box[3] <= y0 or m.box[1] >= y1
        assert (m.question, m.image) == (q.question, q.image)


class _Cal:
    x0, k = 0.45, 8.0


class _Setup:
    calibration = _Cal()


def _run(ru: list[bool], rs: list[bool], sweep_points: int, agree: int = 60) -> dict:
    ru_, rs_ = np.asarray(ru), np.asarray(rs)
    m = {"asr": rate_of(~ru_), "over_refusal": rate_of(rs_), "refused_unsafe": ru_, "refused_safe": rs_}
    sweep = [(r / 10, rate_of([r >= 5] * 4), rate_of([r >= 5] * 4)) for r in range(11)]
    return {"methods": {"moras": m, "ecso": m}, "agreement": rate_of([True] * agree),
            "diff_unsafe": paired_bootstrap_diff(ru_, ru_), "diff_safe": paired_bootstrap_diff(rs_, rs_),
            "sweep": sweep, "distinct_points": sweep_points}


def test_sections_state_equivalence_and_step_from_the_numbers() -> None:
    run = _run([True, True, True, False], [False, True, False, False], 2)
    text = moras_section({0: run}, _Setup(), 20)
    assert "0.75 [0.30, 0.95] (3/4)" not in text  # ASR is shown, not the refusal rate
    assert "0.25 [0.05, 0.70] (1/4)" in text  # ASR = 1/4 answered
    assert "MoRAS is equivalent to ECSO" in text and "It is a step" in text
    assert "smallest r of the grid with ASR no higher is r = 0.0: ASR 0.00 [0.00, 0.49] (0/4)" in text  # fixture: ASR 0 below 0.5
    sep = [{"condition": c, "layer": 0, "fdr_in_sample": 2.0,
            "cv": type("CV", (), {"auroc": 0.6, "fdr": 0.1})(),
            "shuffled": type("S", (), {"auroc_mean": 0.5})()} for c in ("plain", "reformulated")]
    att = {"diff_vs_benign": (-0.2, -0.6, 0.2)}
    cc = can_cannot("toy-llava", {0: run}, att, sep)
    assert "Cannot show" in cc and "graded steering" in cc and "not" not in cc.split("**Can show:**")[0]
    assert "agree on 1.00 [0.94, 1.00] (60/60)" in cc
    assert "better held-out separability" in cc.split("**Cannot show:**")[1]  # equal held-out AUROC: not better
    assert "the same rise appears on a benign named object" in cc
    flat = {**att, "rows": {"hazard box": {"H_n": {"rise": (-0.15, -0.29, -0.02)}}}}
    cc = can_cannot("toy-llava-2", {0: run}, flat, sep)
    assert "raises attention on the risky region: the H_n rise on the hazard box is -0.15 [-0.29, -0.02]" in cc
    assert "same rise appears" not in cc  # no rise: nothing to compare with the benign object
    from moras_interp.organisms.honest_card import attention_section

    rows = {g: {"H_n": {"plain": (1.0, 0.9, 1.1), "context": (0.9, 0.8, 1.0), "rise": (-0.1, -0.2, 0.05)}}
            for g in ("hazard box", "benign object box")}
    text = attention_section({"rows": rows, "n": {"hazard box": 5, "benign object box": 5},
                              "diff_vs_benign": (0.0, -0.1, 0.1)})
    assert "**no measurable rise**" in text and "the change is not risk-specific" in text
    small = moras_section({0: _run([True], [False], 6, agree=8)}, _Setup(), 20)
    assert "too small to call them equivalent" in small and "6 distinct operating points" in small
    assert "It is a step" not in small
    assert pooled([rate_of([True, False]), rate_of([True])]).fmt() == "0.67 [0.21, 0.94] (2/3)"


def test_adaptive_verdict_and_degenerate_calibration_are_said() -> None:
    from moras_interp.eval.stats import Rate
    from moras_interp.organisms.honest_card import adaptive_verdict

    assert adaptive_verdict(Rate(20, 200), Rate(200, 200)).startswith("MoRAS refuses fewer")
    assert adaptive_verdict(Rate(95, 200), Rate(40, 200)).startswith("Fixed steering refuses fewer")
    assert "not distinguishable" in adaptive_verdict(Rate(95, 200), Rate(93, 200))
    run = _run([True] * 3 + [False], [False] * 4, 6)  # MoRAS ASR 1/4; sweep ASR 0 below r = 0.5

    class _Steep:
        x0, k = 0.99997, 139330.0

    text = moras_section({0: run}, type("S", (), {"calibration": _Steep()})(), 40)
    assert "The calibration is degenerate (k = 139330" in text
    sep = [{"condition": c, "layer": 0, "fdr_in_sample": 2.0, "cv": type("CV", (), {"auroc": 0.8, "fdr": 0.1})(),
            "shuffled": type("S", (), {"auroc_mean": 0.5})()} for c in ("plain", "reformulated")]
    cc = can_cannot("toy-llava-2", {0: run}, {}, sep)
    # equal ASR at r = 0.0 with over-refusal 0/4 vs MoRAS 0/4: not distinguishable → a "cannot"
    assert "that adaptive steering beats a fixed r at equal ASR" in cc.split("**Cannot show:**")[1]
