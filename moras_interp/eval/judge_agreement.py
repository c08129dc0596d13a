"""How well each refusal judge agrees with XSTest's 2,250 human-labelled answers (writes docs/judges.md).

XSTest (Röttger et al., 2024) published 5 models' answers to its 450 prompts, each labelled by two humans
(``final_label`` ∈ ``1_full_compliance``, ``2_full_refusal``, ``3_partial_refusal``). Every judge in
:data:`moras_interp.eval.judge.JUDGES` is scored against those labels: accuracy with a 95% Wilson interval,
Cohen's κ, and precision / recall of the refusal class, overall and per model::

    python -m moras_interp.eval.judge_agreement --data ../shared/benchmark_data/xstest/completions
    python -m moras_interp.eval.judge_agreement --data ... --out docs/judges.md            # (re)write
    python -m moras_interp.eval.judge_agreement --data ... --out docs/judges.md --check    # exit 1 if stale

Headline convention: a partial refusal counts as a refusal; the second table counts it as compliance.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moras_interp.atomic import atomic_write_text
from moras_interp.eval.judge import JUDGES, RefusalJudge

__all__ = ["LABELS", "Agreement", "LabelledAnswer", "agreement", "agreement_tables", "cohen_kappa",
           "gold_refused", "load_xstest_completions", "main", "update_doc", "wilson_interval"]

LABELS = ("1_full_compliance", "2_full_refusal", "3_partial_refusal")
FILE_PREFIX = "xstest_v2_completions_"
BEGIN, END = "<!-- judge-agreement:begin -->", "<!-- judge-agreement:end -->"
_COLUMNS = ("id", "prompt", "completion", "final_label")


@dataclass(frozen=True)
class LabelledAnswer:
    """One model answer with XSTest's human label; ``model`` is the file name's suffix (e.g. ``gpt4``)."""

    model: str
    id: str
    prompt: str
    completion: str
    final_label: str


def load_xstest_completions(folder: str | Path) -> list[LabelledAnswer]:
    """Every row of ``folder/xstest_v2_completions_*.csv`` (files in name order), validated."""
    folder = Path(folder)
    files = sorted(folder.glob(f"{FILE_PREFIX}*.csv"))
    if not files:
        raise FileNotFoundError(f"No {FILE_PREFIX}*.csv in {folder}; pass --data <exaggerated-safety>/model_completions.")
    out: list[LabelledAnswer] = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; expected {list(_COLUMNS)}.")
            for line, row in enumerate(reader, start=2):
                if any(row.get(c) is None for c in _COLUMNS):
                    raise ValueError(f"{path}, row starting at line {line}: truncated row (fewer fields than the header).")
                if row["final_label"] not in LABELS:
                    raise ValueError(f"{path}, row {row['id']!r}: final_label {row['final_label']!r} not in {LABELS}.")
                out.append(LabelledAnswer(path.stem.removeprefix(FILE_PREFIX), row["id"], row["prompt"],
                                          row["completion"], row["final_label"]))
    return out


def gold_refused(rows: Sequence[LabelledAnswer], *, partial_is_refusal: bool = True) -> np.ndarray:
    """Human verdicts as bools ``[n]`` (``True`` = refused); partial refusals follow ``partial_is_refusal``."""
    refusal = {"2_full_refusal"} | ({"3_partial_refusal"} if partial_is_refusal else set())
    return np.array([r.final_label in refusal for r in rows], dtype=bool)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95%)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"Need 0 <= successes <= n and n > 0, got {successes}/{n}.")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def cohen_kappa(pred: Sequence[bool], gold: Sequence[bool]) -> float:
    """Cohen's κ of two binary raters; NaN when chance agreement is 1 (both raters constant and equal)."""
    a, b = np.asarray(pred, dtype=bool), np.asarray(gold, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"pred and gold must be equal-length non-empty 1-D, got {a.shape} and {b.shape}.")
    p_o = float(np.mean(a == b))
    p_e = float(np.mean(a) * np.mean(b) + np.mean(~a) * np.mean(~b))
    return float("nan") if p_e == 1.0 else (p_o - p_e) / (1.0 - p_e)


@dataclass(frozen=True)
class Agreement:
    """A judge's agreement with gold labels; precision / recall / flagged are about the refusal class."""

    n: int
    accuracy: float
    ci_low: float
    ci_high: float
    kappa: float
    precision: float     # refusals flagged that humans call refusals (NaN if none flagged)
    recall: float        # human refusals the judge flags (NaN if none)
    flagged_compliant: float   # share of human-compliant answers the judge calls refusals (NaN if none)


def _ratio(k: int, n: int) -> float:
    return k / n if n else float("nan")


def agreement(pred: Sequence[bool], gold: Sequence[bool]) -> Agreement:
    """Accuracy (with 95% Wilson interval), κ, refusal precision / recall and false-refusal rate."""
    p, g = np.asarray(pred, dtype=bool), np.asarray(gold, dtype=bool)
    kappa = cohen_kappa(p, g)
    correct, n = int(np.sum(p == g)), p.size
    lo, hi = wilson_interval(correct, n)
    tp = int(np.sum(p & g))
    return Agreement(n, correct / n, lo, hi, kappa, _ratio(tp, int(p.sum())), _ratio(tp, int(g.sum())),
                     _ratio(int(np.sum(p & ~g)), int((~g).sum())))


def _f(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def agreement_tables(rows: Sequence[LabelledAnswer],
                     judges: dict[str, Callable[[], RefusalJudge]] | None = None) -> str:
    """Markdown: per judge under both conventions, then accuracy / κ per model (headline convention)."""
    judges = JUDGES if judges is None else judges
    answers, questions = [r.completion for r in rows], [r.prompt for r in rows]
    preds = {name: np.array(make()(answers, questions), dtype=bool) for name, make in judges.items()}
    models = sorted({r.model for r in rows})
    counts = {lab: sum(r.final_label == lab for r in rows) for lab in LABELS}
    out = [f"n = {len(rows)} answers ({len(models)} models × {len(rows) // max(len(models), 1)}); human labels: "
           + ", ".join(f"{lab} {c}" for lab, c in counts.items()) + ". Accuracy with its 95% Wilson interval; "
           "precision / recall of the refusal class; *flagged* = share of human-compliant answers judged refusals; "
           "κ with `xstest` = agreement with XSTest's matcher, not with the humans."]
    for partial, title in ((True, "Headline: partial refusal counts as refusal"),
                           (False, "Partial refusal counts as compliance")):
        gold = gold_refused(rows, partial_is_refusal=partial)
        vs = "xstest" if partial and "xstest" in preds else None      # judge-vs-judge κ, once
        out += ["", f"**{title}** ({int(gold.sum())} refusals / {len(rows)})", "",
                "| judge | n | accuracy [95% CI] | Cohen's κ | precision | recall | flagged |"
                + (f" κ with `{vs}` |" if vs else ""), "|---|---|---|---|---|---|---|" + ("---|" if vs else "")]
        for name, pred in preds.items():
            a = agreement(pred, gold)
            out.append(f"| `{name}` | {a.n} | {_f(a.accuracy)} [{_f(a.ci_low)}, {_f(a.ci_high)}] | {_f(a.kappa)} "
                       f"| {_f(a.precision)} | {_f(a.recall)} | {_f(a.flagged_compliant)} |"
                       + (f" {_f(cohen_kappa(pred, preds[vs]))} |" if vs else ""))
    gold = gold_refused(rows)
    out += ["", "**Per model** (headline convention): accuracy / κ", "",
            "| model | n | " + " | ".join(f"`{n}`" for n in preds) + " |", "|---|---|" + "---|" * len(preds)]
    for model in models:
        idx = np.array([r.model == model for r in rows])
        cells = [agreement(p[idx], gold[idx]) for p in preds.values()]
        out.append(f"| {model} | {int(idx.sum())} | " + " | ".join(f"{_f(a.accuracy)} / {_f(a.kappa)}" for a in cells)
                   + " |")
    return "\n".join(out) + "\n"


def update_doc(text: str, table: str) -> str:
    """``text`` with the part between the judge-agreement markers replaced by ``table``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"The document must contain the markers {BEGIN!r} and {END!r} once each, in that order.")
    head, rest = text.split(BEGIN)
    return f"{head}{BEGIN}\n{table}{END}{rest.split(END, 1)[1]}"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m moras_interp.eval.judge_agreement", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder with xstest_v2_completions_*.csv")
    ap.add_argument("--out", help="markdown file whose judge-agreement section is (re)written; prints if omitted")
    ap.add_argument("--check", action="store_true", help="with --out: exit 1 if the file is out of date")
    args = ap.parse_args(argv)
    table = agreement_tables(load_xstest_completions(args.data))
    if args.out is None:
        if args.check:
            ap.error("--check needs --out.")
        print(table, end="")
        return 0
    out = Path(args.out)
    if not out.is_file():
        raise FileNotFoundError(f"{out} does not exist; create it with the markers {BEGIN} / {END}.")
    old = out.read_text(encoding="utf-8")
    new = update_doc(old, table)
    if args.check:
        if new != old:
            print(f"{out} is out of date; rerun without --check.", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(out, new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
