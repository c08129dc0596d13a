"""Judge agreement with XSTest's human labels: metric formulas, loader checks, the real 2,250, the doc table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moras_interp.eval.judge import JUDGES
from moras_interp.eval.judge_agreement import (
    BEGIN,
    END,
    agreement,
    agreement_tables,
    cohen_kappa,
    gold_refused,
    load_xstest_completions,
    main,
    update_doc,
    wilson_interval,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "benchmark_data" / "xstest" / "completions"
HEADER = "id,type,prompt,completion,annotation_1,annotation_2,agreement,final_label\n"


def _confusion(tp: int, fp: int, fn: int, tn: int) -> tuple[np.ndarray, np.ndarray]:
    pred = np.array([1] * tp + [1] * fp + [0] * fn + [0] * tn, dtype=bool)
    gold = np.array([1] * tp + [0] * fp + [1] * fn + [0] * tn, dtype=bool)
    return pred, gold


def _kappa_reference(m: np.ndarray) -> float:
    """Cohen's κ from a confusion matrix m[pred, gold]: (N·trace − Σ row·col) / (N² − Σ row·col)."""
    n, rows, cols = m.sum(), m.sum(axis=1), m.sum(axis=0)
    chance = float(rows @ cols)
    return float((n * np.trace(m) - chance) / (n * n - chance))


def _wilson_reference(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Both roots of (p̂ − p)² = z² p (1 − p) / n, the definition of the Wilson interval."""
    ph = k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    lo, hi = sorted(np.roots([a, b, c]).real)
    return float(lo), float(hi)


@pytest.mark.parametrize(("tp", "fp", "fn", "tn"), [(20, 5, 10, 15), (3, 0, 1, 40), (7, 9, 2, 1), (5, 5, 5, 5)])
def test_metrics_against_the_confusion_matrix(tp, fp, fn, tn):
    pred, gold = _confusion(tp, fp, fn, tn)
    m = np.array([[tn, fn], [fp, tp]])                     # rows: pred 0/1, cols: gold 0/1
    a = agreement(pred, gold)
    n = tp + fp + fn + tn
    assert a.n == n and a.accuracy == pytest.approx((tp + tn) / n, abs=1e-12)
    assert a.kappa == pytest.approx(_kappa_reference(m), abs=1e-12)
    assert a.precision == pytest.approx(tp / (tp + fp)) and a.recall == pytest.approx(tp / (tp + fn))
    assert a.flagged_compliant == pytest.approx(fp / (fp + tn))
    assert (a.ci_low, a.ci_high) == pytest.approx(_wilson_reference(tp + tn, n), abs=1e-9)


def test_kappa_hand_value_and_edge_cases():
    pred, gold = _confusion(20, 5, 10, 15)                 # p_o = 0.7, p_e = 0.5·0.6 + 0.5·0.4 = 0.5
    assert cohen_kappa(pred, gold) == pytest.approx(0.4)
    assert cohen_kappa([True, False], [True, False]) == pytest.approx(1.0)
    assert np.isnan(cohen_kappa([True, True], [True, True]))   # chance agreement 1: undefined
    assert np.isnan(agreement([False, False], [True, False]).precision)
    with pytest.raises(ValueError, match="equal-length"):
        cohen_kappa([True], [True, False])
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0) and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def _write(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"xstest_v2_completions_{name}.csv").write_text(HEADER + body, encoding="utf-8")


def test_loader_reads_models_and_rejects_bad_rows(tmp_path):
    _write(tmp_path / "ok", "m1", 'v2-1,t,"Q, one","I am sorry.",x,x,TRUE,2_full_refusal\n'
                                  "v2-2,t,Q2,Sure,x,x,TRUE,3_partial_refusal\n")
    _write(tmp_path / "ok", "m0", "v2-1,t,Q1,Sure,x,x,TRUE,1_full_compliance\n")
    rows = load_xstest_completions(tmp_path / "ok")
    assert [(r.model, r.id, r.prompt) for r in rows] == [("m0", "v2-1", "Q1"), ("m1", "v2-1", "Q, one"),
                                                         ("m1", "v2-2", "Q2")]
    assert gold_refused(rows).tolist() == [False, True, True]
    assert gold_refused(rows, partial_is_refusal=False).tolist() == [False, True, False]
    _write(tmp_path / "label", "m", "v2-1,t,Q,A,x,x,TRUE,4_other\n")
    with pytest.raises(ValueError, match="final_label '4_other'"):
        load_xstest_completions(tmp_path / "label")
    _write(tmp_path / "short", "m", "v2-1,t,Q,A\n")
    with pytest.raises(ValueError, match="truncated row"):
        load_xstest_completions(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="xstest_v2_completions_"):
        load_xstest_completions(tmp_path / "nothing")


def test_update_doc_replaces_only_the_marked_section():
    doc = f"intro\n{BEGIN}\nold\n{END}\noutro\n"
    assert update_doc(doc, "new\n") == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        update_doc("no markers", "x")


@pytest.fixture(scope="module")
def real_rows():
    if not DATA.is_dir():
        pytest.skip(f"XSTest completions not found at {DATA} (the shared benchmark_data folder is absent).")
    return load_xstest_completions(DATA)


def test_default_judge_beats_xstest_matcher_on_the_2250_labels(real_rows):
    assert len(real_rows) == 2250
    answers = [r.completion for r in real_rows]
    for partial in (True, False):
        gold = gold_refused(real_rows, partial_is_refusal=partial)
        acc = {name: agreement(JUDGES[name]()(answers), gold).accuracy for name in ("keyword", "xstest")}
        assert acc["keyword"] >= acc["xstest"], (partial, acc)
    # the figures of the issue: the legacy keyword judge flags 10.5% of compliant answers, XSTest's matcher 4.2%
    gold = gold_refused(real_rows)
    assert agreement(JUDGES["keyword-legacy"]()(answers), gold).flagged_compliant == pytest.approx(0.105, abs=5e-4)
    assert agreement(JUDGES["xstest"]()(answers), gold).flagged_compliant == pytest.approx(0.042, abs=5e-4)
    # ... and the former prefix mode agrees with XSTest's matcher at κ 0.92
    assert cohen_kappa(JUDGES["prefix-legacy"]()(answers), JUDGES["xstest"]()(answers)) == pytest.approx(0.92, abs=5e-3)


def test_docs_table_is_up_to_date(real_rows, tmp_path):
    doc = ROOT / "docs" / "judges.md"
    text = doc.read_text(encoding="utf-8")
    assert update_doc(text, agreement_tables(real_rows)) == text, (
        "docs/judges.md is out of date: python -m moras_interp.eval.judge_agreement "
        "--data ../shared/benchmark_data/xstest/completions --out docs/judges.md")
    copy = tmp_path / "judges.md"
    copy.write_text(text.replace("| `keyword` | 2250 |", "| `keyword` | 2249 |"), encoding="utf-8")
    assert main(["--data", str(DATA), "--out", str(copy), "--check"]) == 1
    assert main(["--data", str(DATA), "--out", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == text
