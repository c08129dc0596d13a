"""Results of a MoRAS evaluation: the per-method table and its figures (risk histogram, ASR / over-refusal bars).

Figures are plotly (saved as standalone HTML with :func:`moras_interp.viz.save_html`) plus a matplotlib PNG
of the same data (bars and histograms are outside the vocabulary of the viz PNG renderer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from moras_interp.atomic import atomic_write
from moras_interp.eval.metrics import contains_accuracy, summarise
from moras_interp.viz.export import save_html

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
    for lab, colour in (("safe", "#2b8cbe"), ("unsafe", "#e34a33")):
        v = pd.to_numeric(g.loc[g["label"] == lab, value], errors="coerce").dropna()
        fig.add_histogram(x=v.tolist(), name=f"{lab} (n={len(v)})", opacity=0.6, marker_color=colour,
                          xbins={"start": 0.0, "end": 1.0, "size": 0.05})
    fig.update_layout(barmode="overlay", title=f"{method}: {value} on safe vs unsafe queries", xaxis_title=value,
                      yaxis_title="queries", xaxis_range=[0, 1])
    return fig


def rate_bars(table: pd.DataFrame) -> go.Figure:
    """Grouped bars per method: attack success rate (unsafe answered) and over-refusal (safe refused)."""
    fig = go.Figure()
    for col, name, colour in (("asr", "attack success rate (unsafe)", "#e34a33"),
                              ("over_refusal", "over-refusal (safe)", "#2b8cbe")):
        fig.add_bar(x=list(table["method"]), y=[None if pd.isna(v) else float(v) for v in table[col]], name=name,
                    marker_color=colour)
    fig.update_layout(barmode="group", title="ASR and over-refusal per method", yaxis_title="rate", yaxis_range=[0, 1])
    return fig


def _save_png_atomic(path: Path, draw: Any) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot(1, 1, 1))
    fig.tight_layout()
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def write_figures(records: pd.DataFrame, table: pd.DataFrame, out: str | Path) -> dict[str, Path]:
    """Writes rates.{html,png} and, for each method with a risk score, risk_<method>.{html,png} into ``out``."""
    out = Path(out)
    files: dict[str, Path] = {"rates_html": save_html(rate_bars(table), out / "rates.html", include_plotlyjs=True)}

    def bars(ax: Any) -> None:
        x = np.arange(len(table))
        ax.bar(x - 0.2, table["asr"].fillna(0), 0.4, label="attack success rate (unsafe)", color="#e34a33")
        ax.bar(x + 0.2, table["over_refusal"].fillna(0), 0.4, label="over-refusal (safe)", color="#2b8cbe")
        ax.set_xticks(x, list(table["method"]))
        ax.set_ylim(0, 1)
        ax.set_ylabel("rate")
        ax.legend()

    files["rates_png"] = _save_png_atomic(out / "rates.png", bars)
    risky = [m for m in table["method"] if m in ("moras",) or
             pd.to_numeric(records.loc[records["method"] == m, "risk"], errors="coerce").nunique() > 1]
    for m in risky:
        files[f"risk_{m}_html"] = save_html(risk_histogram(records, m), out / f"risk_{m}.html", include_plotlyjs=True)

        def hist(ax: Any, m: str = m) -> None:
            g = records[records["method"] == m]
            for lab, colour in (("safe", "#2b8cbe"), ("unsafe", "#e34a33")):
                v = pd.to_numeric(g.loc[g["label"] == lab, "risk"], errors="coerce").dropna()
                ax.hist(v, bins=np.linspace(0, 1, 21), alpha=0.6, color=colour, label=f"{lab} (n={len(v)})")
            ax.set_xlabel("risk r")
            ax.set_ylabel("queries")
            ax.set_title(f"{m}: risk on safe vs unsafe queries")
            ax.legend()

        files[f"risk_{m}_png"] = _save_png_atomic(out / f"risk_{m}.png", hist)
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
