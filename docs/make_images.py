"""Draw the pictures of docs/quickstart.md and docs/concepts.md into docs/img/ with the project's own figure code.

    python docs/make_images.py            # about a minute on CPU (the shipped organism)

Every picture is a plotly figure built by moras_interp (attention plots, viz.figures, MoRAS report/trace
figures) and written as a small PNG by ``viz.save_png(..., engine="matplotlib")`` (no browser needed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

import moras_interp as mi
from moras_interp.moras.prompts import CONTEXT_PROMPT, reformulate
from moras_interp.moras.report import risk_histogram
from moras_interp.organisms import tasks, toy_examples
from moras_interp.viz import save_png
from moras_interp.viz.figures import heatmap_over_image, layer_head_grid

OUT = Path(__file__).resolve().parent / "img"
SIZE = {"width": 640, "height": 420}


def main(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    model = mi.load_model("toy-llava")
    q = tasks.harmful_image_queries(3)[2]  # the quickstart's scene: a knife at (0, 0, 14, 14)
    batch = model.prepare([q.image], [q.question])
    layout = batch.layouts[0]
    written = []

    def save(fig: go.Figure, name: str) -> None:
        fig.update_layout(**SIZE)
        written.append(save_png(fig, out / f"{name}.png", engine="matplotlib"))

    # hooks: the residual stream read at blocks.{l}.hook_resid_post, every position, every layer
    _, cache = model.run_with_cache(batch, names="blocks.*.hook_resid_post")
    norms = np.stack([cache[f"blocks.{l}.hook_resid_post"][0].norm(dim=-1).numpy() for l in range(model.n_layers)])
    img = layout.image_positions.numpy()
    fig = go.Figure(go.Heatmap(z=norms, colorscale="Viridis", colorbar={"title": "‖h‖"}))
    fig.update_layout(title=f"blocks.{{l}}.hook_resid_post: ‖h‖ per position (image tokens: {img.min()}–{img.max()})",
                      xaxis_title="position (left: image tokens; right: the question; last: the answer's first token)",
                      yaxis_title="layer l")
    save(fig, "hooks")

    # layouts: which image token covers which pixels of the original image
    grid = layout.images[0].grids[0]
    order = np.arange(grid.rows * grid.cols, dtype=float).reshape(grid.rows, grid.cols)
    save(heatmap_over_image(q.image, order, box=q.box, colorscale="Viridis", opacity=0.6,
                            colorbar_title="token", title=f"{grid.rows}×{grid.cols} image tokens over the "
                            f"48×48 scene, in sequence order (box: the {q.obj})"), "layouts")

    # head sets: image-attention mass per (layer, head), the top-visual set outlined
    attn = mi.cross_modal_attention(model, batch, query="last")
    save(layer_head_grid(attn.image_mass(0), highlight=attn.resolve_heads("top-visual"),
                         title="image-attention mass of the last token; outlined: heads='top-visual'"), "head_sets")

    # region share: the aggregated map over the image with the hazard's box (also the quickstart's heatmap)
    fig = attn.heatmap(0, heads="top-visual", box=q.box)
    save(fig, "heatmap")
    context = model.generate(model.prepare([q.image], [CONTEXT_PROMPT]), max_new_tokens=20).texts[0]
    reform = mi.cross_modal_attention(model, model.prepare([q.image], [reformulate(context, q.question)]))
    H = attn.head_set(threshold=0.2)
    save(attn.difference(reform, 0, heads=H, box=q.box), "region_share")

    # risk: calibration pairs' risk, unsafe vs safe; steering: how far stage 3 moved each answer step
    calib = toy_examples(20, 20, split="calib")
    moras = mi.MoRAS.calibrate(model, calib, progress=False)
    records = pd.DataFrame({"method": "moras", "label": [e.label for e in calib],
                            "risk": [t.risk for t in moras.calibration_traces]})
    save(risk_histogram(records), "risk")
    qs = toy_examples(1, 1)
    traces = moras.run([e.load_image() for e in qs], [e.text for e in qs], progress=False)
    fig = go.Figure([go.Bar(name=f"{e.label} query, r = {t.risk:.2f}", x=[f"answer token {i}" for i in
                                                                         range(len(t.displacement_norms))],
                            y=t.displacement_norms) for e, t in zip(qs, traces)])
    fig.update_layout(title="stage 3: ‖r (u_t − h_t)‖, the step added after the final norm", barmode="group",
                      yaxis_title="displacement norm")
    save(fig, "steering")
    return written


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(p, p.stat().st_size // 1024, "KiB")
