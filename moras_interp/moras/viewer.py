"""MoRAS trace viewer: one query at a time — its visual context, the stage-2 next-token distributions, s and
r, and the steered answer next to the unsteered one — with a slider over the queries.

    view = trace_viewer(traces, unsteered=[t.answer for t in plain_traces])
    save_explorer_html(view, "traces.html")   # standalone, no kernel
    trace_viewer_widget(traces, unsteered)     # ipywidgets in Jupyter
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from moras_interp.moras.trace import MoRASTrace
from moras_interp.viz.explorer import frame_name, interactive, slider_layout
from moras_interp.viz.style import OKABE_ITO, ellipsize, wrap_title

_FIELDS = ("question", "label", "visual context", "s (similarity)", "r (risk)", "steered answer",
           "unsteered answer")


def _label(i: int, t: MoRASTrace) -> str:
    return f"{i}: {t.label or '?'}" + (f" ({t.id})" if t.id else "")


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _traces_for(t: MoRASTrace, unsteered: str | None, n_steps: int, k: int) -> list[go.BaseTraceType]:
    values = [t.question, t.label or "—", t.visual_context or "—", _fmt(t.similarity), _fmt(t.risk),
              t.answer or "—", "—" if unsteered is None else unsteered]
    table = go.Table(columnwidth=[1, 4], header={"values": ["", "this query"], "align": "left"},
                     cells={"values": [list(_FIELDS), [ellipsize(str(v), 240) for v in values]], "align": "left",
                            "height": 24})
    bars = []
    for s in range(n_steps):
        step = t.stage2_topk[s] if s < len(t.stage2_topk) else []
        step = (list(step) + [("", 0.0)] * k)[:k]
        bars.append(go.Bar(x=[f"{j + 1}" for j in range(k)], y=[p for _, p in step], name=f"step {s}",
                           text=[repr(tok) if tok else "" for tok, _ in step], textposition="outside",
                           marker_color=OKABE_ITO[s % len(OKABE_ITO)],
                           hovertemplate="rank %{x}: %{text} p=%{y:.3f}<extra></extra>"))
    return [table, *bars]


def _figure(traces: Sequence[MoRASTrace], unsteered: Sequence[str | None], i: int) -> go.Figure:
    n_steps = max((len(t.stage2_topk) for t in traces), default=0) or 1
    k = max((len(s) for t in traces for s in t.stage2_topk), default=0) or 1
    fig = make_subplots(rows=2, cols=1, specs=[[{"type": "table"}], [{"type": "xy"}]], row_heights=[0.55, 0.45],
                        vertical_spacing=0.08)
    for j, tr in enumerate(_traces_for(traces[i], unsteered[i], n_steps, k)):
        fig.add_trace(tr, row=1 if j == 0 else 2, col=1)
    fig.update_xaxes(title_text="rank in the stage-2 top-k (token above each bar)", type="category", row=2, col=1)
    fig.update_yaxes(title_text="probability", range=[0, 1.1], row=2, col=1)
    title = (f"MoRAS traces (n = {len(traces)}): context, stage-2 distributions, s, r, steered vs unsteered "
             "answer")
    fig.update_layout(title={"text": wrap_title(title, 860), "x": 0.5, "xanchor": "center"}, width=900,
                      height=820, barmode="group", template="plotly_white",
                      margin={"l": 70, "r": 30, "t": 80, "b": 120},
                      legend={"orientation": "h", "x": 0, "y": 0.47, "yanchor": "bottom"})
    return fig


def trace_viewer(traces: Sequence[MoRASTrace], unsteered: Sequence[str | MoRASTrace | None] | None = None
                 ) -> go.Figure:
    """A figure with one frame per trace and a slider over them (export with
    :func:`moras_interp.viz.explorer.save_explorer_html`). ``unsteered``: the same queries answered without
    steering (answers or traces, aligned with ``traces``)."""
    if not traces:
        raise ValueError("trace_viewer needs at least one MoRASTrace.")
    uns = _unsteered(traces, unsteered)
    fig = _figure(traces, uns, 0)
    n_steps = len(fig.data) - 1
    k = max((len(s) for t in traces for s in t.stage2_topk), default=0) or 1
    labels = [_label(i, t) for i, t in enumerate(traces)]
    fig.frames = [go.Frame(name=frame_name([lab]), data=_traces_for(t, uns[i], n_steps, k),
                           traces=list(range(len(fig.data))))
                  for i, (lab, t) in enumerate(zip(labels, traces))]
    fig.update_layout(sliders=slider_layout([("query", labels)], plot_px=int(820 * 0.4)))
    return fig


def _unsteered(traces: Sequence[MoRASTrace], unsteered: Sequence[Any] | None) -> list[str | None]:
    if unsteered is None:
        return [None] * len(traces)
    if len(unsteered) != len(traces):
        raise ValueError(f"{len(unsteered)} unsteered answers for {len(traces)} traces: align them by query.")
    return [u.answer if isinstance(u, MoRASTrace) else u for u in unsteered]


def trace_viewer_widget(traces: Sequence[MoRASTrace], unsteered: Sequence[str | MoRASTrace | None] | None = None
                        ) -> Any:
    """The same viewer as an ipywidgets dropdown over the queries (Jupyter)."""
    uns = _unsteered(traces, unsteered)
    labels = [_label(i, t) for i, t in enumerate(traces)]
    return interactive([("query", labels)], lambda lab: _figure(traces, uns, labels.index(lab)))
