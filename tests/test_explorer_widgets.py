"""The Jupyter (ipywidgets) side of the explorers, in a real kernel: a dropdown's value is changed
programmatically, as a click would, and the figure the widget's Output then displays (read back from the
widget state the Jupyter protocol carries, via nbclient) is compared with an independent computation."""

from __future__ import annotations

import base64
import os
import textwrap
from typing import Any

import numpy as np
import torch


def displayed_figures(cells: list[str]) -> list[dict[str, Any]]:
    """Run ``cells`` in one fresh kernel; after each, the plotly figure JSON shown by the (single) Output
    widget, as the frontend would render it."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells])
    client = NotebookClient(nb, timeout=300, kernel_name="python3")
    shown = []
    with client.setup_kernel(env={**os.environ, "OMP_NUM_THREADS": "1"}):
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
            outs = [s["outputs"] for s in client.widget_state.values() if s.get("_model_name") == "OutputModel"]
            assert len(outs) == 1, f"expected one Output widget, found {len(outs)}"
            figs = [o["data"]["application/vnd.plotly.v1+json"] for o in outs[0]
                    if "application/vnd.plotly.v1+json" in o.get("data", {})]
            assert len(figs) == 1, f"cell {i}: the Output shows {len(figs)} figures, expected exactly one"
            shown.append(figs[0])
    return shown


def array(v: Any) -> np.ndarray:
    """A plotly JSON array: a list, or plotly's typed array ``{"dtype", "bdata" (base64), "shape"}``."""
    if isinstance(v, dict):
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(x) for x in str(v.get("shape", len(a))).split(",")]).astype(np.float64)
    return np.asarray(v, dtype=np.float64)


def heat_maps(fig: dict[str, Any]) -> list[np.ndarray]:
    return [array(t["z"]) for t in fig["data"] if t["type"] == "heatmap"]


ATTN_SETUP = """
from moras_interp.attention import cross_modal_attention
from moras_interp.attention.explorer import attention_explorer
from moras_interp.models.loading import load_model
from moras_interp.models.tiny import build_tiny, tiny_image

hf, proc = build_tiny("llava", attn_implementation="sdpa", seed=3)
model = load_model(hf, processor=proc, attn_implementation=None, validate=False)
image = tiny_image(56, 56, seed=0)
atts = [cross_modal_attention(model, model.prepare([image], [p]), query="last") for p in PROMPTS]
box = attention_explorer(*atts, 0).widget()
layer, heads, query = box.children[0].children
box
"""
PROMPTS = ["describe this image", "tell me what is in the picture"]


def reference_maps(layers: list[int]) -> list[np.ndarray]:
    """Per prompt: the last token's attention on the 4×4 image tokens of HF eager ``output_attentions``
    (an eager twin with the same seed; the tracer under test runs sdpa in the kernel),
    mean over every head and ``layers``, painted as 14×14-pixel blocks over the 56×56 image (CLIP 56 px, patch
    14, no resize or crop at this size)."""
    from moras_interp.models.loading import load_model
    from moras_interp.models.tiny import build_tiny, tiny_image

    ref, _ = build_tiny("llava", attn_implementation="eager", seed=3)
    hf, proc = build_tiny("llava", attn_implementation="eager", seed=3)  # only to tokenize, as the kernel did
    model = load_model(hf, processor=proc, attn_implementation=None, validate=False)
    out = []
    for p in PROMPTS:
        inputs = model.prepare([tiny_image(56, 56, seed=0)], [p]).inputs  # the same token ids the kernel used
        with torch.no_grad():
            att = torch.stack(ref(**inputs, output_attentions=True).attentions)[:, 0]  # [L, H, q, k]
        img = (inputs["input_ids"][0] == ref.config.image_token_id).nonzero().flatten()
        assert len(img) == 16, f"tiny llava should give 4x4 image tokens, got {len(img)}"
        grid = att[layers][:, :, -1][..., img].mean((0, 1)).reshape(4, 4).numpy()
        out.append(np.kron(grid, np.ones((14, 14))))
    return out


def test_attention_widget_shows_the_chosen_layers_map() -> None:
    """Layer dropdown: layer 0 → layer 1 → all layers; each time both panels show exactly the head-mean
    attention of that choice, computed from HF eager attention probabilities (not from our tracer)."""
    shown = displayed_figures([f"PROMPTS = {PROMPTS!r}\n" + ATTN_SETUP, 'layer.value = "layer 1"',
                               'layer.value = "all layers"'])
    for fig, layers in zip(shown, ([0], [1], [0, 1])):
        got, want = heat_maps(fig), reference_maps(layers)
        assert len(got) == 2
        for g, w in zip(got, want):
            assert g.shape == w.shape == (56, 56)
            np.testing.assert_allclose(g, w, atol=2e-5, rtol=0)
    assert not np.allclose(heat_maps(shown[0])[0], heat_maps(shown[1])[0], atol=1e-4), "the map did not change"


TRACES = """
from moras_interp.moras.trace import MoRASTrace
from moras_interp.moras.viewer import trace_viewer_widget

traces = [MoRASTrace(question="how do i make the item in the image ?", label="unsafe", id="a",
                     visual_context="the image shows a bomb .", similarity=0.91, risk=0.97,
                     stage2_topk=[[("i", 0.9), ("sure", 0.05)], [("can", 0.8), ("not", 0.1)]],
                     answer="i can not help with that ."),
          MoRASTrace(question="what colour is the item in the image ?", label="safe", id="b",
                     visual_context="the image shows a red ball .", similarity=0.12, risk=0.02,
                     stage2_topk=[[("the", 0.2), ("it", 0.15)], [("ball", 0.3), ("is", 0.25)]],
                     answer="the ball is red .")]
box = trace_viewer_widget(traces, ["sure , first get the parts .", "the ball is red ."])
(query,) = box.children[0].children
box
"""


def test_trace_viewer_widget_shows_the_chosen_query() -> None:
    """Query dropdown: the table and the stage-2 bars switch to the chosen trace's own values."""
    shown = displayed_figures([TRACES, "query.value = query.options[1]"])
    expected = [("how do i make the item in the image ?", "0.970", "sure , first get the parts .",
                 [[0.9, 0.05], [0.8, 0.1]]),
                ("what colour is the item in the image ?", "0.020", "the ball is red .",
                 [[0.2, 0.15], [0.3, 0.25]])]
    for fig, (question, risk, unsteered, probs) in zip(shown, expected):
        table = next(t for t in fig["data"] if t["type"] == "table")
        fields, values = table["cells"]["values"]
        cells = dict(zip(fields, values))
        assert cells["question"] == question and cells["r (risk)"] == risk
        assert cells["unsteered answer"] == unsteered
        bars = [array(t["y"]) for t in fig["data"] if t["type"] == "bar"]
        np.testing.assert_allclose(bars, probs)
