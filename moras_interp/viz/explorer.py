"""Interactive explorers without a kernel: plotly frames selected by several sliders.

A figure holds one frame per combination of slider choices (frame name = the chosen labels joined by
``SEP``). In exported HTML a small script (:data:`SLIDER_JS`, passed to plotly's ``post_script``) listens to
every slider and shows the frame of the current combination, so the file works offline with no Python
running. In Jupyter, :func:`interactive` offers the same choices as ipywidgets controls (optional import).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from moras_interp.atomic import atomic_write

SEP = " ‖ "

# {plot_id} is filled in by plotly's to_html(post_script=...).
SLIDER_JS = """
(function() {
  var gd = document.getElementById('{plot_id}');
  var SEP = %s;
  function labels() {
    var s = (gd._fullLayout && gd._fullLayout.sliders) || gd.layout.sliders || [];
    return s.map(function(sl) { return sl.steps[sl.active || 0].label; });
  }
  function show() {
    return Plotly.animate(gd, [labels().join(SEP)], {mode: 'immediate', frame: {duration: 0, redraw: true},
                                                     transition: {duration: 0}});
  }
  gd.on('plotly_sliderchange', show);
  // select(slider, step): what clicking that slider step does (used by tests and by links)
  window.morasSelect = function(slider, step) {
    var upd = {}; upd['sliders[' + slider + '].active'] = step;
    return Plotly.relayout(gd, upd).then(show);
  };
})();
"""


def slider_layout(dims: Sequence[tuple[str, Sequence[str]]], active: Sequence[int] | None = None, *,
                  plot_px: int = 300) -> list[dict]:
    """One plotly slider per dimension ``(name, labels)``, stacked under the plot (``plot_px``: the plot
    area's height, to space them 75 px apart); steps do nothing by themselves (``method="skip"``): the page
    script picks the frame of the combination."""
    active = list(active or [0] * len(dims))
    out = []
    for i, (name, labels) in enumerate(dims):
        out.append({
            "active": active[i], "currentvalue": {"prefix": f"{name}: ", "font": {"size": 13}},
            "pad": {"t": 10, "b": 0}, "len": 0.9, "x": 0.05, "y": -(40 + 75 * i) / plot_px, "yanchor": "top",
            "steps": [{"label": str(lab), "method": "skip", "args": [None]} for lab in labels],
        })
    return out


def frame_name(labels: Sequence[str]) -> str:
    return SEP.join(str(x) for x in labels)


def save_explorer_html(fig: go.Figure, path: str | Path, *, include_plotlyjs: bool | str = True) -> Path:
    """Write an explorer figure as HTML with the slider script; standalone (plotly.js inlined) by default."""
    import json

    html = fig.to_html(full_html=True, include_plotlyjs=include_plotlyjs, auto_play=False,
                       post_script=SLIDER_JS % json.dumps(SEP))
    return atomic_write(path, lambda fh: fh.write(html.encode("utf-8")))


def interactive(dims: Sequence[tuple[str, Sequence[str]]], draw: Callable[..., go.Figure]) -> Any:
    """ipywidgets controls (one dropdown per dimension) redrawing ``draw(*labels)`` for a live kernel."""
    try:
        import ipywidgets as w
        from IPython.display import display
    except ImportError as e:
        raise ImportError("the Jupyter explorer needs ipywidgets: `pip install ipywidgets` (or the "
                          "`jupyter` extra); the exported HTML works without it.") from e
    controls = [w.Dropdown(options=list(labels), description=name) for name, labels in dims]
    out = w.Output()

    def redraw(_change: Any = None) -> None:
        out.clear_output(wait=True)
        with out:
            display(draw(*[c.value for c in controls]))

    for c in controls:
        c.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox(controls), out])
