"""Every figure builder of the project through both PNG engines (kaleido + Chromium, and the documented
matplotlib fallback): same size, not blank, similar content, titles inside the canvas, axis types as
specified; the fallback refuses what it cannot draw instead of dropping it."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from moras_interp.viz import kaleido_available, save_png
from moras_interp.viz.mpl import UnsupportedFigure, figure_to_matplotlib

needs_browser = pytest.mark.skipif(not kaleido_available(),
                                   reason="no Chromium for kaleido: `apt-get install chromium` (.ci/run does)")


def _img(seed: int = 0) -> Image.Image:
    g = np.random.default_rng(seed)
    return Image.fromarray(g.integers(0, 255, (60, 80, 3), dtype=np.uint8))


def _ablation_df() -> pd.DataFrame:
    rows = []
    for fixed_r in (None, 0.5, 1.0):
        for gamma in (0.0, 0.3):
            for label in ("safe", "unsafe"):
                for i in range(3):
                    rows.append({"fixed_r": fixed_r, "gamma": gamma, "label": label, "example": i,
                                 "setting": f"r{fixed_r}-g{gamma}", "refused": float(i < (fixed_r or 0) * 3 + gamma * 4),
                                 "risk": 0.1 * i + (0.5 if label == "unsafe" else 0.0)})
    return pd.DataFrame(rows)


def _records() -> pd.DataFrame:
    g = np.random.default_rng(0)
    return pd.DataFrame({"method": ["moras"] * 20 + ["none"] * 20, "label": (["safe"] * 10 + ["unsafe"] * 10) * 2,
                         "risk": g.uniform(0, 1, 40), "refused": g.integers(0, 2, 40).astype(bool)})


def _builders() -> dict[str, Callable[[], go.Figure]]:
    from moras_interp.ablations import metric_vs_factor, two_factor_heatmap
    from moras_interp.activations.separability import separability_figure, separability_panel
    from moras_interp.attention.dla import HeadDLA
    from moras_interp.moras.report import rate_bars, risk_histogram
    from moras_interp.moras.trace import MoRASTrace
    from moras_interp.viz import difference_map, heatmap_over_image, layer_head_grid, small_multiples

    heat = np.linspace(0, 1, 60 * 80).reshape(60, 80)
    table = pd.DataFrame({"method": ["none", "moras", "fixed"], "n": [20, 20, 20], "asr": [0.9, 0.1, 0.2],
                          "over_refusal": [0.0, 0.1, 0.6]})
    curves = {"plain": torch.tensor([1.0, 2.0, 3.0, 2.5]), "reformulated": torch.tensor([2.0, 4.0, 6.0, 5.0])}
    auc = {k: v / 8 + 0.3 for k, v in curves.items()}
    trace = MoRASTrace(question="how do I use the thing in the image?", similarity=0.8, risk=0.9,
                       stage2_topk=[[("I", 0.5), ("Sorry", 0.3)], [("cannot", 0.6), ("will", 0.2)]])
    g = torch.Generator().manual_seed(0)
    img_part, txt_part = torch.randn(5, 4, 6, generator=g), torch.randn(5, 4, 6, generator=g)
    z = torch.zeros(5, 4)
    dla = HeadDLA(total=img_part + txt_part, image=img_part, text=txt_part, region=img_part / 3, by_source=z,
                  attn_bias=z, layer_attn=z, layer_mlp=z, embed=z[:, 0], logit_diff=z[:, 0], positions=z[:, 0].long(),
                  answer=z[:, 0].long(), wrong=z[:, 0].long(), region_positions=[])
    return {
        "dla_heatmap": lambda: dla.heatmap("total", title="head DLA"),
        "dla_split": lambda: dla.split_figure(k=6),
        "heatmap_over_image": lambda: heatmap_over_image(_img(), heat, box=(10, 5, 40, 30), title="a heat map"),
        "heatmap_long_title": lambda: heatmap_over_image(
            _img(), heat, title="tiny-llava · layers 0–31 · 12 heads: L8H3, L9H1, L10H2, L11H7, L12H0, L13H5, …"
            "<br><sup>query: last · “what is the small thing in the picture here and how do I use it”</sup>"),
        "difference_map": lambda: difference_map(_img(), heat, heat[::-1], title="A − B"),
        "layer_head_grid": lambda: layer_head_grid(torch.rand(6, 8), highlight=[(1, 2)], title="mass"),
        "small_multiples": lambda: small_multiples([heat, heat.T[:60, :60]], _img(), ["layer 0", "layer 1"],
                                                   title="per layer"),
        "metric_vs_factor": lambda: metric_vs_factor(_ablation_df(), "fixed_r", "refused", color="label"),
        "two_factor_heatmap": lambda: two_factor_heatmap(_ablation_df(), "gamma", "fixed_r", "refused"),
        "two_factor_constant": lambda: two_factor_heatmap(_ablation_df().assign(error=0.075), "gamma", "fixed_r",
                                                          "error"),
        "rate_bars": lambda: rate_bars(table),
        "risk_histogram": lambda: risk_histogram(_records(), "moras"),
        "separability_figure": lambda: separability_figure(auc, "AUROC"),
        "separability_panel": lambda: separability_panel(curves, auc, n="10 vs 10"),
        "trace_summary": trace.summary_figure,
    }


BUILDERS = list(_builders())


def _png(fig: go.Figure, engine: str, tmp_path: Path) -> np.ndarray:
    path = save_png(fig, tmp_path / f"{engine}.png", engine=engine)
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64)


def _layout(fig: go.Figure) -> tuple[int, int]:
    return int(fig.layout.width or 900), int(fig.layout.height or 600)


@pytest.mark.parametrize("name", BUILDERS)
def test_matplotlib_fallback_renders_every_builder(name: str, tmp_path: Path) -> None:
    """The fallback draws every builder at the figure's size, non-blank, with every text inside the canvas."""
    fig = _builders()[name]()
    im = _png(fig, "matplotlib", tmp_path)
    assert im.shape[:2] == _layout(fig)[::-1]
    assert im.std() > 5, f"{name}: blank"
    mfig = figure_to_matplotlib(fig, width=_layout(fig)[0], height=_layout(fig)[1])
    mfig.canvas.draw()  # text positions (axis labels) are settled at draw time
    r = mfig.canvas.get_renderer()
    box = mfig.bbox
    for t in mfig.findobj(lambda a: hasattr(a, "get_text") and a.get_visible() and a.get_text()):
        e = t.get_window_extent(r)
        assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y0 >= box.y0 - 1 and e.y1 <= box.y1 + 1, \
            f"{name}: text {t.get_text()!r} runs off the canvas ({e} vs {box})"
        assert "1e-12" not in t.get_text() and "e−12" not in t.get_text(), f"{name}: offset text {t.get_text()!r}"


@needs_browser
@pytest.mark.parametrize("name", BUILDERS)
def test_both_engines_agree(name: str, tmp_path: Path) -> None:
    """kaleido (plotly's own engine) and the fallback give the same pixel size, non-blank, similar images
    (where the coloured data marks lie, on an 8 x 8 grid, correlates; similar amounts of them), and the
    kaleido title band is not clipped (no ink on the canvas edges above the plot)."""
    fig = _builders()[name]()
    k, m = _png(fig, "kaleido", tmp_path), _png(fig, "matplotlib", tmp_path)
    assert k.shape == m.shape == (*_layout(fig)[::-1], 3)
    assert k.std() > 5 and m.std() > 5, f"{name}: blank"

    def chroma(a: np.ndarray, n: int = 8) -> np.ndarray:  # colour, not grey text / grid lines
        g = a.max(-1) - a.min(-1)
        h, w = g.shape[0] // n * n, g.shape[1] // n * n
        return g[:h, :w].reshape(n, h // n, n, w // n).mean((1, 3)).ravel()

    corr = float(np.corrcoef(chroma(k), chroma(m))[0, 1])
    ink_k, ink_m = (float(((a.max(-1) - a.min(-1)) > 60).mean()) for a in (k, m))
    assert corr > 0.6, f"{name}: the two renderings place the data differently (correlation {corr:.2f})"
    assert max(ink_k, ink_m) <= 2.2 * min(ink_k, ink_m) + 0.01, f"{name}: coloured ink {ink_k:.3f} vs {ink_m:.3f}"
    top = int(fig.layout.margin.t or 80)
    band = k[: top - 5].mean(-1)
    assert (band[:, :3] > 240).all() and (band[:, -3:] > 240).all() and (band[:3] > 240).all(), \
        f"{name}: the title touches the canvas edge"


def _axis(fig: go.Figure, letter: str) -> go.layout.XAxis:
    return fig.layout[f"{letter}axis"]


def test_axis_types_titles_and_n() -> None:
    """Categorical factors on category axes (None a category), integer ticks for layers and heads, a title
    with the n behind it, axis titles on every chart, colour-blind-safe colours, constant data annotated."""
    b = _builders()
    for name in ("metric_vs_factor", "two_factor_heatmap", "rate_bars", "trace_summary", "dla_split"):
        assert _axis(b[name](), "x").type == "category", name
    h = b["two_factor_heatmap"]()
    assert _axis(h, "y").type == "category"
    assert list(h.data[0].y) == ["None", "0.5", "1"] and list(h.data[0].x) == ["0", "0.3"]
    assert "constant: every cell = 0.075" in b["two_factor_constant"]().layout.title.text
    assert "constant" not in h.layout.title.text
    assert "(n = 5 examples)" in b["dla_heatmap"]().layout.title.text
    for grid in (b["layer_head_grid"](), b["dla_heatmap"]()):
        assert grid.layout.xaxis.dtick == 1 and grid.layout.yaxis.dtick == 1 and grid.layout.xaxis.tickformat == "d"
    for name in ("separability_figure", "separability_panel"):
        assert b[name]().layout.xaxis.dtick == 1, name
    for name in ("metric_vs_factor", "two_factor_heatmap", "rate_bars", "risk_histogram", "separability_panel",
                 "trace_summary", "dla_heatmap", "dla_split"):
        fig = b[name]()
        assert "n = " in fig.layout.title.text, f"{name}: no n in the title"
        assert fig.layout.xaxis.title.text, f"{name}: no x-axis title"
        if fig.layout.showlegend:
            assert fig.layout.legend.y >= 1.0 and fig.layout.legend.yanchor == "bottom", f"{name}: legend on data"
    from moras_interp.viz.style import OKABE_ITO
    assert b["rate_bars"]().layout.colorway == OKABE_ITO


def test_long_titles_wrap_and_cut_text_has_an_ellipsis() -> None:
    from moras_interp.viz.style import ellipsize, wrap_title

    fig = _builders()["heatmap_long_title"]()
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) >= 3
    chars = int((fig.layout.width - 40) / (17 * 0.55))
    assert all(len(ln.replace("<sup>", "").replace("</sup>", "")) <= chars / 0.7 for ln in lines)
    assert all(ln.count("<sup>") == ln.count("</sup>") for ln in lines)
    assert ellipsize("what is the small thing in the picture", 20) == "what is the small…"
    assert ellipsize("short", 20) == "short"
    assert wrap_title("a b", 1000) == "a b"
    # a small layer x head grid widens for a long title (two lines; a third reached the 4 x 4 plot)
    from moras_interp.viz import layer_head_grid

    title = "toy-llava: head DLA, logit(i) - logit(sure), mean over scenes (n = 16 examples)"
    grid = layer_head_grid(torch.rand(4, 4), title=title)
    assert grid.layout.title.text.count("<br>") == 1 and 420 < grid.layout.width <= 900
    assert layer_head_grid(torch.rand(4, 4), title="mass").layout.width == 420


def test_fallback_refuses_what_it_cannot_draw() -> None:
    with pytest.raises(UnsupportedFigure, match=r"scatter3d.*Chromium"):
        figure_to_matplotlib(go.Figure(go.Scatter3d(x=[1], y=[2], z=[3])))
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1]))
    fig.add_shape(type="circle", x0=0, y0=0, x1=1, y1=1)
    with pytest.raises(UnsupportedFigure, match="circle"):
        figure_to_matplotlib(fig)


def test_kaleido_engine_without_a_browser_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    with pytest.raises(RuntimeError, match="apt-get install chromium"):
        save_png(go.Figure(go.Bar(x=[1], y=[1])), tmp_path / "x.png", engine="kaleido")


def test_png_bytes_are_a_real_png(tmp_path: Path) -> None:
    p = save_png(_builders()["rate_bars"](), tmp_path / "r.png", engine="matplotlib")
    assert Image.open(io.BytesIO(p.read_bytes())).format == "PNG"
