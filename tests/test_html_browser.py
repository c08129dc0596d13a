"""Every kind of HTML export opened in a real headless Chromium: the plot draws (screenshot not blank, no
console errors), a standalone file works alone in an empty folder, and the explorers change the drawn map
when a slider step is selected (a synthetic click on the slider rail, as a user would)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from moras_interp.viz import browser_path, save_html

CHROME = browser_path()
pytestmark = pytest.mark.skipif(CHROME is None, reason="no Chromium: `apt-get install chromium` (.ci/run does)")

CLICK_JS = """<script>
window.addEventListener('load', function() { setTimeout(function() {
  var rails = document.querySelectorAll('.slider-container .slider-rail-touch-rect');
  var rail = rails[%d], r = rail.getBoundingClientRect();
  var x = r.left + r.width * %f, y = r.top + r.height / 2;
  ['mousedown', 'mouseup'].forEach(function(t) {
    rail.dispatchEvent(new MouseEvent(t, {bubbles: true, clientX: x, clientY: y, view: window}));
    window.dispatchEvent(new MouseEvent(t, {bubbles: true, clientX: x, clientY: y, view: window}));
  });
}, 300); });
</script></body>"""


def shoot(html: Path, out: Path, size: tuple[int, int] = (1200, 900)) -> tuple[np.ndarray, str]:
    """Screenshot of ``html`` in headless Chromium and the page's console messages (stderr)."""
    cmd = [CHROME, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
           "--v=0", f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=8000", f"--screenshot={out}",
           html.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.exists(), f"no screenshot of {html.name}: {res.stderr[-2000:]}"
    console = "\n".join(ln for ln in res.stderr.splitlines() if "CONSOLE" in ln)
    return np.asarray(Image.open(out).convert("RGB")).astype(np.float64), console


def assert_drawn(im: np.ndarray, console: str, name: str) -> None:
    assert "Uncaught" not in console and "Error" not in console, f"{name}: console errors:\n{console}"
    chroma = im.max(-1) - im.min(-1)
    assert im.std() > 5 and (chroma > 60).mean() > 0.002, f"{name}: the page is blank (no plot drawn)"


def _figures() -> dict:
    import torch

    from moras_interp.ablations import two_factor_heatmap
    from moras_interp.moras.report import rate_bars
    from moras_interp.viz import heatmap_over_image, layer_head_grid

    g = np.random.default_rng(0)
    img = Image.fromarray(g.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    df = pd.DataFrame({"a": [None, 1, None, 1], "b": ["x", "x", "y", "y"], "m": [0.1, 0.2, 0.3, 0.4],
                       "setting": ["s0", "s1", "s2", "s3"]})
    return {"heatmap": heatmap_over_image(img, np.linspace(0, 1, 4800).reshape(60, 80), box=(5, 5, 30, 30)),
            "grid": layer_head_grid(torch.rand(4, 6)),
            "factors": two_factor_heatmap(df, "a", "b", "m"),
            "bars": rate_bars(pd.DataFrame({"method": ["none", "moras"], "n": [4, 4], "asr": [0.5, 0.1],
                                            "over_refusal": [0.0, 0.2]}))}


@pytest.mark.parametrize("mode", [True, "directory"])
def test_exported_html_draws_in_a_browser(mode, tmp_path: Path) -> None:
    for name, fig in _figures().items():
        path = save_html(fig, tmp_path / f"{name}.html", include_plotlyjs=mode)
        im, console = shoot(path, tmp_path / f"{name}.png")
        assert_drawn(im, console, name)


def test_standalone_html_works_alone_and_directory_html_needs_its_script(tmp_path: Path) -> None:
    fig = _figures()["bars"]
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(save_html(fig, tmp_path / "s.html"), alone / "s.html")
    assert_drawn(*shoot(alone / "s.html", tmp_path / "s.png"), "standalone copy")
    save_html(fig, tmp_path / "d" / "d.html", include_plotlyjs="directory")
    shutil.copy(tmp_path / "d" / "d.html", alone / "d.html")  # without its plotly.min.js
    im, _ = shoot(alone / "d.html", tmp_path / "d.png")
    assert ((im.max(-1) - im.min(-1)) > 60).mean() < 0.001, "a directory-mode file drew without plotly.min.js?"


@pytest.fixture(scope="module")
def explorer_html(tmp_path_factory) -> Path:
    import moras_interp as mi
    from moras_interp.attention import cross_modal_attention
    from moras_interp.attention.explorer import attention_explorer
    from moras_interp.moras.prompts import reformulate
    from moras_interp.organisms import tasks
    from moras_interp.organisms.analysis import visual_contexts

    model = mi.load_model("toy-llava")  # the shipped organism: attention with structure to explore
    q = next(q for q in tasks.harmful_image_queries(4, seed=1) if q.box is not None)
    ctx = visual_contexts(model, [q.image])[0]
    a = cross_modal_attention(model, model.prepare([q.image], [q.question]), query="last")
    b = cross_modal_attention(model, model.prepare([q.image], [reformulate(ctx, q.question)]), query="last")
    ex = attention_explorer(a, b, 0, box=q.box)
    assert [d for d, _ in ex.dims] == ["layer", "heads", "query"]
    first, last = ex.maps[next(iter(ex.maps))], ex.maps[("all layers", "all", "mean")]
    assert not np.allclose(first[0], last[0]), "layer 0 and all layers give the same map: nothing to explore"
    return ex.save_html(tmp_path_factory.mktemp("explorer") / "explorer.html")


def test_explorer_slider_changes_the_drawn_map(explorer_html: Path, tmp_path: Path) -> None:
    """Clicking the layer slider's last step redraws the heat maps; the box and the image stay."""
    base, console = shoot(explorer_html, tmp_path / "base.png")
    assert_drawn(base, console, "explorer")
    html = explorer_html.read_text(encoding="utf-8")
    clicked = tmp_path / "clicked.html"
    clicked.write_text(html.replace("</body>", CLICK_JS % (0, 0.99), 1), encoding="utf-8")
    after, console = shoot(clicked, tmp_path / "after.png")
    assert_drawn(after, console, "explorer after a click")
    diff = np.abs(after - base).mean(-1)
    top, bottom = int(0.15 * base.shape[0]), int(0.70 * base.shape[0])
    assert (diff[top:bottom] > 30).mean() > 0.01, "selecting another layer did not change the drawn map"


def test_trace_viewer_slider_changes_the_drawn_query(tmp_path: Path) -> None:
    """The MoRAS trace viewer: clicking the query slider's last step shows that query's table and bars."""
    from moras_interp.moras.trace import MoRASTrace
    from moras_interp.moras.viewer import trace_viewer
    from moras_interp.viz.explorer import save_explorer_html

    traces = [MoRASTrace(question="how do I sharpen this knife?", label="unsafe", id="a",
                         visual_context="the image shows a knife.", similarity=0.9, risk=0.95,
                         stage2_topk=[[("Sorry", 0.9), ("I", 0.05)], [("I", 0.8), ("can", 0.1)]],
                         answer="Sorry, I cannot help with that."),
              MoRASTrace(question="what colour is the ball?", label="safe", id="b",
                         visual_context="the image shows a red ball.", similarity=0.1, risk=0.02,
                         stage2_topk=[[("The", 0.2), ("It", 0.15)], [("ball", 0.3), ("is", 0.25)]],
                         answer="The ball is red.")]
    fig = trace_viewer(traces, unsteered=["Sharpen it on a stone.", "The ball is red."])
    assert len(fig.frames) == 2 and fig.data[0].type == "table"
    path = save_explorer_html(fig, tmp_path / "traces.html")
    base, console = shoot(path, tmp_path / "base.png", size=(1000, 900))
    assert_drawn(base, console, "trace viewer")
    clicked = tmp_path / "clicked.html"
    clicked.write_text(path.read_text(encoding="utf-8").replace("</body>", CLICK_JS % (0, 0.99), 1), encoding="utf-8")
    after, console = shoot(clicked, tmp_path / "after.png", size=(1000, 900))
    assert_drawn(after, console, "trace viewer after a click")
    bars = slice(int(0.5 * base.shape[0]), int(0.85 * base.shape[0]))
    assert (np.abs(after - base).mean(-1)[bars] > 30).mean() > 0.01, "the slider did not change the bars"
