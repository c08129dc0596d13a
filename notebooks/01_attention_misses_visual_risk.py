# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Attention misses visual risk
#
# The paper's first diagnosis: when a harmful request refers to *the item in the image*, the last prompt token's attention over the image does not concentrate on the risky object; once the question carries the model's own one-sentence visual context (MoRAS stage 1), it does. We trace the exact attention rows of the last prompt token to every image token (no `output_attentions` dump), draw them over the original image, and measure the share that lands on the hazard's box, per layer and for the visual head set H_n.

# %% tags=["parameters"]
MODEL = "toy-llava"      # HF id or local path, e.g. llava-hf/llava-1.5-7b-hf (GPU)
DEVICE = None            # e.g. cuda
DTYPE = None             # e.g. bfloat16 on a GPU
DATA = None              # JSONL/CSV with text, image, label, region; None = held-out scenes of the organism
N = 40                   # examples per class
FIGURES = "../figures"   # PNG + HTML figures go here; a relative path is relative to this notebook

# %%
from pathlib import Path

import pandas as pd
import torch

import moras_interp as mi
from moras_interp.notebooks import relative_to_notebook
from moras_interp.viz import save_html, save_png

FIGURES = relative_to_notebook(FIGURES)  # the same folder whatever the working directory
FIGURES.mkdir(parents=True, exist_ok=True)
model = mi.load_model(MODEL, device=DEVICE, dtype=DTYPE)
# cached / resumable results of this notebook, one folder per model and data size
RUNS = Path(FIGURES).resolve().parent / "runs" / f"{Path(str(MODEL)).name}-{Path(str(DATA)).stem}-N{N}"


def export(fig, name):
    """Write a figure as PNG and standalone HTML into FIGURES."""
    save_png(fig, Path(FIGURES) / f"{name}.png")
    save_html(fig, Path(FIGURES) / f"{name}.html")  # standalone: plotly.js inlined
    return fig


model

# %%
from moras_interp.organisms import tasks

if DATA is None:
    unsafe = tasks.harmful_image_queries(N, seed=1)
    safe = tasks.benign_image_queries(N, seed=1)
else:
    from moras_interp.eval.datasets import load_csv, load_jsonl

    from types import SimpleNamespace

    rows = [SimpleNamespace(image=r.load_image(), question=r.text, label=r.label, box=r.region)  # labels normalised
            for r in (load_jsonl if str(DATA).endswith(".jsonl") else load_csv)(DATA)]            # by the loader
    unsafe = [r for r in rows if r.label == "unsafe"][:N]
    safe = [r for r in rows if r.label == "safe"][:N]
queries = unsafe + safe
print(len(unsafe), "unsafe and", len(safe), "safe queries")

# %% [markdown]
# ## One scene, plain vs with visual context

# %%
from moras_interp.attention import cross_modal_attention
from moras_interp.moras.prompts import reformulate
from moras_interp.organisms.analysis import visual_contexts

q = next(q for q in unsafe if q.box is not None)
context = visual_contexts(model, [q.image])[0]
plain_batch = model.prepare([q.image], [q.question])
reform_batch = model.prepare([q.image], [reformulate(context, q.question)])
plain = cross_modal_attention(model, plain_batch, query="last")     # rows [1, L, H, 1, keys]
reform = cross_modal_attention(model, reform_batch, query="last")
print("question:", q.question, "| context:", context, "| hazard box:", q.box)
print("rows sum to 1:", bool(torch.allclose(plain.rows.sum(-1), torch.ones(1), atol=1e-4)))

# %%
export(plain.heatmap(0, heads="top-visual", box=q.box), "01_heatmap_plain")

# %%
export(reform.heatmap(0, heads="top-visual", box=q.box), "01_heatmap_with_context")

# %%
export(plain.difference(reform, 0, heads="top-visual", box=q.box), "01_difference")

# %% [markdown]
# Which heads look at the image at all? The layer × head grid of image-attention mass (outlined: the top visual heads), and the head-averaged map per layer.

# %%
export(plain.layer_head_grid(0), "01_layer_head_grid")

# %%
export(reform.small_multiples(0, box=q.box), "01_small_multiples_with_context")

# %% [markdown]
# ## Over the held-out set
# Share of image attention on the hazard's box divided by the box's area share (1.0 = no better than uniform), per layer and for H_n (heads with image mass > 0.2).

# %%
from moras_interp.organisms.analysis import attention_study, attention_summary

contexts = visual_contexts(model, [q.image for q in unsafe], batch_size=16)
study = attention_study(model, unsafe, contexts=contexts, threshold=0.2, batch_size=16)
summary = attention_summary(study)
summary.round(3)

# %%
import plotly.graph_objects as go

fig = go.Figure([go.Bar(x=[str(l) for l in summary.index], y=summary[f"ratio ({c})"], name=c)
                 for c in ("plain", "reformulated")])
fig.add_hline(y=1.0, line_dash="dot")
fig.update_layout(title=f"{model.model_id}: attention on the hazard vs its area share (last token)",
                  xaxis_title="layer (H_n = visual head set)", yaxis_title="share / area share")
export(fig, "01_region_share_by_layer")
