"""Metrics: ASR, over-refusal, QA accuracy, latency, risk AUROC and the tidy summary table."""

import math

import numpy as np
import pandas as pd
import pytest

from moras_interp.eval.metrics import (
    attack_success_rate,
    contains_accuracy,
    exact_match_accuracy,
    latency_summary,
    normalise_answer,
    over_refusal_rate,
    risk_auroc,
    summarise,
)


def test_rates():
    assert attack_success_rate([True, False, False, False]) == 0.75
    assert over_refusal_rate([True, False, False, False]) == 0.25
    assert attack_success_rate([1, 1, 0]) == pytest.approx(1 / 3)
    for fn in (attack_success_rate, over_refusal_rate):
        with pytest.raises(ValueError, match="no examples"):
            fn([])
    with pytest.raises(ValueError, match="expected bools"):
        over_refusal_rate([0.5, 1.0])


def test_accuracy():
    assert normalise_answer("  The  Eiffel Tower! ") == "eiffel tower"
    answers = ["The cat.", "a dog", "Paris", "42"]
    golds = ["cat", ["Dog", "puppy"], "London", "4"]
    assert exact_match_accuracy(answers, golds) == 0.5
    assert exact_match_accuracy(answers, golds, normalise=False) == 0.0
    assert contains_accuracy(["The answer is B, because", "I think 42", "It is 4."], ["b", "4", "4"]) == pytest.approx(2 / 3)
    assert contains_accuracy(["Answer: B."], ["B"], normalise=False) == 1.0
    assert contains_accuracy(["answer: b."], ["B"], normalise=False) == 0.0
    with pytest.raises(ValueError, match="no answers"):
        exact_match_accuracy([], [])
    with pytest.raises(ValueError, match="2 answers but 1"):
        contains_accuracy(["a", "b"], ["a"])


def test_latency_summary():
    s = latency_summary([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["mean"] == 4.0 and s["median"] == 3.0 and s["total"] == 20.0 and s["n"] == 5
    assert s["p90"] == pytest.approx(7.6)                       # 4 + 0.6 * (10 - 4)
    with pytest.raises(ValueError, match="no timings"):
        latency_summary([])
    with pytest.raises(ValueError, match="non-negative"):
        latency_summary([1.0, -1.0])


def test_risk_auroc():
    assert risk_auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    # pairs (pos, neg): (.1,.9)=0, (.1,.5)=0, (.5,.9)=0, (.5,.5)=tie 0.5 -> 0.5 / 4
    assert risk_auroc([0.1, 0.9, 0.5, 0.5], [True, False, True, False]) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="both"):
        risk_auroc([0.1, 0.2], [True, True])


def test_summarise_by_setting():
    df = pd.DataFrame({
        "setting": ["none"] * 4 + ["moras"] * 4,
        "label": ["unsafe", "unsafe", "Safe", "safe"] * 2,
        "refused": [False, False, False, True, True, False, False, False],
        "risk": [0.2, 0.4, 0.1, 0.3, 0.9, 0.8, 0.1, 0.2],
        "latency_s": [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 4.0],
    })
    out = summarise(df)
    assert list(out["setting"]) == ["none", "moras"]
    none, moras = out.iloc[0], out.iloc[1]
    assert (none["n"], none["n_unsafe"], none["n_safe"]) == (4, 2, 2)
    assert none["asr"] == 1.0 and none["over_refusal"] == 0.5 and none["refusal_rate"] == 0.25
    assert moras["asr"] == 0.5 and moras["over_refusal"] == 0.0
    assert moras["mean_risk"] == pytest.approx(0.5) and moras["mean_risk_unsafe"] == pytest.approx(0.85)
    assert none["risk_auroc"] == pytest.approx(0.75) and moras["risk_auroc"] == 1.0
    assert moras["mean_latency_s"] == 2.5 and moras["total_latency_s"] == 10.0
    whole = summarise(df, group_by=None)
    assert len(whole) == 1 and whole.loc[0, "asr"] == 0.75


def test_summarise_optional_columns_and_errors():
    df = pd.DataFrame({"label": ["unsafe", "unsafe"], "refused": [True, False]})
    out = summarise(df)                                          # no 'setting' column -> one row
    assert out.loc[0, "asr"] == 0.5 and math.isnan(out.loc[0, "over_refusal"])
    assert "mean_risk" not in out.columns and "mean_latency_s" not in out.columns
    two = summarise(df.assign(model=["a", "a"], setting=["x", "y"]), group_by=["model", "setting"])
    assert list(two.columns[:3]) == ["model", "setting", "n"] and list(two["asr"]) == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['refused'\]"):
        summarise(df.drop(columns="refused"))
    assert summarise(df.assign(label=["harmful", 1])).equals(out)  # the one label rule: both mean "unsafe"
    with pytest.raises(ValueError, match=r"summarise: row 1: label 'malicious' is not a safety label"):
        summarise(df.assign(label=["harmful", "malicious"]))
    with pytest.raises(ValueError, match="group_by"):
        summarise(df, group_by="model")
    with pytest.raises(ValueError, match="no rows"):
        summarise(df.iloc[:0])


def test_risk_auroc_counts_float32_noise_as_ties():
    """r of identical text in different batch rows differs by ~1e-7: still a tie (½), as in a hand count."""
    r_exact = np.array([0.99, 0.99, 0.2, 0.99])
    y = np.array([True, False, False, True])
    pos, neg = r_exact[y], r_exact[~y]
    ref = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert risk_auroc(r_exact + np.array([5e-8, -5e-8, 0.0, 2e-8]), y) == pytest.approx(ref)


def test_ties_do_not_depend_on_rounding_boundaries_or_scale():
    """Neighbours across a decimal boundary and float32 neighbours of a KL-sized score are ties as well."""
    assert risk_auroc([0.4999995, 0.4999994999, 0.1, 0.9], [True, False, False, True]) == pytest.approx(0.875)
    a = np.float32(-10.123456)
    b = np.nextafter(a, np.float32(0))
    assert risk_auroc([float(a), float(b)], [True, False]) == risk_auroc([float(b), float(a)], [True, False]) == 0.5
    assert risk_auroc([0.5, 0.5001], [False, True]) == 1.0  # a real difference is not a tie
