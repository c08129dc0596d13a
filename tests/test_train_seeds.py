"""The training-seed section: operating points counted and verdicts stated from the numbers (hand-built Rates;
intervals checked against scipy's exact-score Wilson formula through Rate, tested in test_stats.py)."""

from __future__ import annotations

from types import SimpleNamespace

from moras_interp.eval.stats import Rate
from moras_interp.organisms.train_seeds import flip_points, seeds_section


def _res(agree_k: int, sweep_ks: list[tuple[int, int]]) -> dict:
    m = {"asr": Rate(10, 100), "over_refusal": Rate(40, 100)}
    return {"methods": {"none": {"asr": Rate(95, 100)}, "moras": m, "ecso": {"asr": Rate(30, 100),
                                                                             "over_refusal": Rate(18, 100)}},
            "agreement": Rate(agree_k, 200),
            "sweep": [(0.1 * i, Rate(a, 100), Rate(o, 100)) for i, (a, o) in enumerate(sweep_ks)]}


def test_flip_points_counts_distinct_operating_points():
    assert flip_points(_res(200, [(95, 1), (95, 1), (0, 100)])["sweep"]) == 2
    assert flip_points(_res(200, [(95, 1), (77, 7), (7, 47), (0, 96), (0, 100)])["sweep"]) == 5


def test_section_states_which_seeds_are_graded_and_differ():
    cal = SimpleNamespace(x0=0.712, k=15.955)
    results = {0: _res(156, [(95, 1), (77, 7), (7, 47), (0, 96), (0, 100)]),   # 0.78 agreement, 5 points
               1: _res(199, [(95, 1), (95, 1), (0, 100)])}                    # 0.995 agreement, a switch
    text = seeds_section(results, {0: cal, 1: cal}, "python -m x")
    assert "| 0 | 0.712 / 16 | 0.95 [" in text and "| 5 of 5 r values |" in text and "| 2 of 3 r values |" in text
    assert "0.78 [0.72, 0.83] (156/200)" in text
    assert "seeds [0] of [0, 1]" in text
    assert text.count("seeds [0]") == 2   # graded: seed 0 only; differ: seed 0 only (seed 1's interval reaches 1)
    assert "The graded fixed-r sweep is a property of training seed(s) [0], not of the recipe" in text
    assert "The MoRAS/ECSO difference is a property of training seed(s) [0]" in text
    both = seeds_section({0: results[0], 2: results[0]}, {0: cal, 2: cal}, "python -m x")
    assert "The graded fixed-r sweep replicates on every training seed measured." in both
