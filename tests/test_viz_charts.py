"""The browser-free PNG renderer draws chart traces (lines, grouped bars, log axes) where plotly would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from moras_interp.viz import save_png
from moras_interp.viz.mpl import figure_to_matplotlib


def _pixels(fig: go.Figure, path: Path) -> np.ndarray:
    save_png(fig, path, width=400, height=300)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_grouped_bars_are_drawn_in_their_colours_and_proportions(tmp_path: Path) -> None:
    fig = go.Figure([go.Bar(x=["a", "b"], y=[1.0, 0.25], name="one", marker_color="#ff0000"),
                     go.Bar(x=["a", "b"], y=[0.5, 0.5], name="two", marker_color="#0000ff")])
    fig.update_layout(margin={"l": 40, "r": 40, "t": 40, "b": 40}, yaxis_range=[0, 1], showlegend=False)
    px = _pixels(fig, tmp_path / "bars.png")
    red = (px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] < 60)
    blue = (px[..., 2] > 200) & (px[..., 0] < 60) & (px[..., 1] < 60)
    cols_red = np.nonzero(red.any(0))[0]
    heights = [red[:, c].sum() for c in cols_red]
    # two red bars: the first four times as tall as the second (1.0 vs 0.25 on a 0–1 axis)
    assert 3.5 < max(heights) / min(heights) < 4.5
    assert blue.sum() > 0 and red.sum() > 0
    # within group "a" the red bar is left of the blue one (grouped, not stacked)
    assert cols_red.min() < np.nonzero(blue.any(0))[0].min()


def test_lines_categorical_and_log_axes() -> None:
    fig = go.Figure([go.Scatter(x=["x", "y", "z"], y=[1, 10, 100], mode="lines+markers", name="s")])
    fig.update_yaxes(type="log")
    mfig = figure_to_matplotlib(fig)
    ax = mfig.axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "z"]
    line = ax.lines[0]
    assert np.allclose(line.get_xdata(), [0, 1, 2]) and np.allclose(line.get_ydata(), [1, 10, 100])
    assert ax.get_legend() is not None
