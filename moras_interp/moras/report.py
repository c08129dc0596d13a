"""Results of a MoRAS evaluation: the per-method table and its figures (risk histogram, ASR / over-refusal bars).

Figures are plotly, saved as standalone HTML and PNG (:func:`moras_interp.viz.save_html` / ``save_png``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from moras_interp.eval.metrics import contains_accuracy, summarise
from moras_interp.viz.export import save_html, save_png
from moras_interp.viz.style import SAFE, UNSAFE, style_chart

STAGES: tuple[str, ...] = ("context", "risk", "caption", "answer")


def summary_table(records: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method from per-example records (columns method, label, refused, risk, latency_s, …).

    Columns: method, n, n_unsafe, n_safe, asr (unsafe answered), over_refusal (safe refused), refusal_rate,
    mean_risk (+ per class and risk_auroc), mean / p90 / total latency (s per query, all stages), utility
    (answers containing their gold answer, over examples that have one; NaN if none) and n_gold, and the mean
    seconds per query of each stage (time_<stage>_s).
    """
    if records.empty:
        raise ValueError("No records to summarise: run at least one example.")
    df = records.copy()
    df["risk"] = pd.to_numeric(df.get("risk"), errors="coerce")
    table = summarise(df[["method", "label", "refused", "risk", "latency_s"]], group_by="method")
    util, n_gold = [], []
    for m in table["method"]:
        g = df[(df["method"] == m) & df["gold"].notna()]
        n_gold.append(len(g))
        util.append(contains_accuracy(list(g["answer"]), list(g["gold"])) if len(g) else math.nan)
    table["utility"], table["n_gold"] = util, n_gold
    for st in STAGES:
        col = df["stage_times"].map(lambda d, st=st: d.get(st, math.nan) if isinstance(d, dict) else math.nan)
        if col.notna().any():
            table[f"time_{st}_s"] = [float(col[df["method"] == m].mean()) for m in table["method"]]
    if methods is not None:
        order = {m: i for i, m in enumerate(methods)}
        table = table.sort_values("method", key=lambda s: s.map(lambda m: order.get(m, len(order)))).reset_index(drop=True)
    return table


def risk_histogram(records: pd.DataFrame, method: str = "moras", value: str = "risk") -> go.Figure:
    """Overlaid histograms of ``value`` (risk r or similarity s) for safe vs unsafe examples of ``method``."""
    g = records[records["method"] == method]
    fig = go.Figure()
    for lab, colour in (("safe", SAFE), ("unsafe", UNSAFE)):
        v = pd.to_numeric(g.loc[g["label"] == lab, value], errors="coerce").dropna()
        fig.add_histogram(x=v.tolist(), name=f"{lab} (n={len(v)})", opacity=0.6, marker_color=colour,
                          xbins={"start": 0.0, "end": 1.0, "size": 0.05})
    style_chart(fig, title=f"{method}: {value} on safe vs unsafe queries", x_title=f"{value} (0–1)",
                y_title="queries (count)", n=len(g))
    fig.update_layout(barmode="overlay", xaxis_range=[0, 1])
    return fig


def rate_bars(table: pd.DataFrame) -> go.Figure:
    """Grouped bars per method: attack success rate (unsafe answered) and over-refusal (safe refused)."""
    fig = go.Figure()
    for col, name, colour in (("asr", "attack success rate (unsafe answered)", UNSAFE),
                              ("over_refusal", "over-refusal (safe refused)", SAFE)):
        fig.add_bar(x=list(table["method"]), y=[None if pd.isna(v) else float(v) for v in table[col]], name=name,
                    marker_color=colour, texttemplate="%{y:.2f}", textposition="outside")
    n = int(table["n"].max()) if "n" in table and len(table) else None
    style_chart(fig, title="Attack success and over-refusal per method", x_title="method",
                y_title="rate (fraction of queries)", n=None if n is None else f"{n} per method", x_kind="category")
    fig.update_layout(barmode="group", yaxis_range=[0, 1.12])
    return fig


def write_figures(records: pd.DataFrame, table: pd.DataFrame, out: str | Path) -> dict[str, Path]:
    """Writes rates.{html,png} and, for each method with a risk score, risk_<method>.{html,png} into ``out``
    (standalone HTML; PNG from the same plotly figure via :func:`moras_interp.viz.save_png`)."""
    out = Path(out)
    figs = {"rates": rate_bars(table)}
    risky = [m for m in table["method"] if m in ("moras",) or
             pd.to_numeric(records.loc[records["method"] == m, "risk"], errors="coerce").nunique() > 1]
    figs |= {f"risk_{m}": risk_histogram(records, m) for m in risky}
    files: dict[str, Path] = {}
    for name, fig in figs.items():
        files[f"{name}_html"] = save_html(fig, out / f"{name}.html")
        files[f"{name}_png"] = save_png(fig, out / f"{name}.png")
    return files


def markdown_table(table: pd.DataFrame) -> str:
    """The summary as a markdown table (rates and times with 3 significant digits)."""
    cols = [c for c in ("method", "n", "asr", "over_refusal", "utility", "mean_risk_unsafe", "mean_risk_safe",
                        "risk_auroc", "mean_latency_s") if c in table.columns]
    cols += [c for c in table.columns if c.startswith("time_")]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for _, r in table.iterrows()]
    return "\n".join(lines) + "\n"


__all__ = ["markdown_table", "rate_bars", "risk_histogram", "summary_table", "write_figures"]
