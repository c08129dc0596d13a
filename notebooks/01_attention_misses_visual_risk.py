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
ORGANISM = "toy-llava"   # shipped model organism: the model, and the data when DATA is None
MODEL = None             # HF id or local path instead of the organism, e.g. llava-hf/llava-1.5-7b-hf (GPU)
DEVICE = None            # e.g. cuda
DTYPE = None             # e.g. bfloat16 on a GPU
DATA = None              # JSONL/CSV with text, image, label, region; None = held-out scenes of the organism
N = 40                   # examples per class
FIGURES = "../figures"   # PNG + HTML figures go here; a relative path is relative to this notebook
PLOTLYJS = True          # HTML figures: True = standalone (plotly.js inlined), or cdn, or directory

# %%
import pandas as pd
import torch

from moras_interp import notebooks

# loads the model, resolves FIGURES (relative to this notebook) and RUNS, silences third-party output
session = notebooks.setup(ORGANISM, model=MODEL, device=DEVICE, dtype=DTYPE, data=DATA, n=N,
                          figures=FIGURES, plotlyjs=PLOTLYJS)
model, FIGURES, RUNS, export = session.model, session.figures, session.runs, session.export
model

# %%
unsafe, safe = session.image_queries()  # held-out scenes of the organism, or the rows of DATA
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
# ## Explore it yourself
# Layer, head set and query token as sliders, plain and reformulated side by side, the hazard box drawn. The exported HTML works offline without a kernel; in Jupyter with ipywidgets, `explorer.widget()` gives the same choices as dropdowns.

# %%
from moras_interp.attention.explorer import attention_explorer

explorer = attention_explorer(plain, reform, 0, box=q.box)
print("explorer:", explorer.save_html(FIGURES / "01_attention_explorer.html", include_plotlyjs=PLOTLYJS))

# %% [markdown]
# ## Which heads write the compliance, and do they read the hazard?
# Direct logit attribution of every head to `logit("i") - logit("sure")` at the last prompt token (`i` starts the
# organism's refusal, `sure` its compliance; negative = pushes towards complying). Each head's contribution splits
# exactly over the positions it attends to, `Σ_k pattern[q, k] · v[k] W_O`, so it separates into what the head
# reads from image tokens, from text tokens, and from the image tokens covering the hazard's box
# (`moras_interp.attention.head_dla`; details in docs/analysis.md).

# %%
from moras_interp.attention import head_dla

probe = unsafe[:16]
dla_batch = model.prepare([q.image for q in probe], [q.question for q in probe])
dla = head_dla(model, dla_batch, "i", "sure", box=[q.box for q in probe])
exact = torch.allclose(dla.embed + dla.layer_attn.sum(-1) + dla.layer_mlp.sum(-1), dla.logit_diff, atol=1e-3)
print("components add up to the model's logit difference:", exact)
# where the logit difference is written (mean over scenes): heads split by what they read, MLPs, embeddings
pd.DataFrame({"logit diff (i - sure)": dla.logit_diff, "all heads": dla.total.sum((1, 2)),
              "heads, read from image tokens": dla.image.sum((1, 2)),
              "heads, read from the hazard": dla.region.sum((1, 2)), "heads, read from text": dla.text.sum((1, 2)),
              "MLPs": dla.layer_mlp.sum(-1), "embeddings": dla.embed}).mean().round(3)

# %%
dla.table(k=8).round(3)

# %%
export(dla.heatmap("total", title=f"{model.model_id}: head DLA, logit(i) - logit(sure), mean over scenes"),
       "01_dla_heads")

# %%
export(dla.split_figure(k=8, title="top heads: logit contribution read from image vs text tokens, mean"),
       "01_dla_image_vs_text")

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

from moras_interp.viz.style import style_chart

fig = go.Figure([go.Bar(x=[str(l) for l in summary.index], y=summary[f"ratio ({c})"], name=c)
                 for c in ("plain", "reformulated")])
fig.add_hline(y=1.0, line_dash="dot")
style_chart(fig, title=f"{model.model_id}: attention on the hazard vs its area share (last token)",
            x_title="layer (H_n = visual head set)", y_title="share / area share (1 = uniform)",
            n=f"{len(unsafe)} unsafe scenes", x_kind="category")
export(fig, "01_region_share_by_layer")
