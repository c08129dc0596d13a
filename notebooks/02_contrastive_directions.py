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
# # 02 · Contrastive directions: where do safe and unsafe image queries separate?
#
# The paper's second diagnosis: last-token states of unsafe and safe *image* queries are hard to separate (low Fisher Discriminant Ratio) when the question is asked plainly, and become separable once the question is reformulated with the model's own visual context. We collect the residual stream at every layer into a resumable on-disk store, compute FDR and held-out AUROC per layer for both conditions, derive a difference-of-means direction and steer with it.

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
# ## Visual contexts (MoRAS stage 1)
# The model describes each image itself; the reformulated question is `context + " " + question`.

# %%
from moras_interp.moras.prompts import reformulate
from moras_interp.organisms.analysis import visual_contexts

contexts = visual_contexts(model, [q.image for q in queries], batch_size=16)
plain = [dict(image=q.image, text=q.question, label=q.label) for q in queries]
reform = [dict(image=q.image, text=reformulate(c, q.question), label=q.label) for c, q in zip(contexts, queries)]
pd.DataFrame({"question": [q.question for q in queries[:4]], "context": contexts[:4]})

# %% [markdown]
# ## Collect last-token residual states
# One forward pass per batch, values read at `blocks.{l}.hook_resid_post`; shards are written atomically and a rerun resumes.

# %%
from moras_interp.activations import (class_activations, collect_activations, layer_separability,
                                      separability_figure_by_condition)

stores = {name: collect_activations(model, data, names="blocks.*.hook_resid_post", positions="last",
                                    batch_size=16, out=RUNS / f"nb02_{name}")
          for name, data in {"plain": plain, "reformulated": reform}.items()}
pairs = {name: class_activations(store, "unsafe", "safe") for name, store in stores.items()}
seps = {name: layer_separability(pair) for name, pair in pairs.items()}
pd.DataFrame({f"FDR {k}": v.fdr.numpy() for k, v in seps.items()}
             | {f"AUROC {k}": v.auroc.numpy() for k, v in seps.items()})

# %%
fig = separability_figure_by_condition(seps, title=f"{model.model_id}: unsafe vs safe image queries")
export(fig, "02_separability")

# %% [markdown]
# ## A refusal direction from text-only requests, and why it needs a risk gate
# The same collection on text-only harmful vs benign requests (which the model does refuse) gives a difference-of-means *refusal direction*. Adding it (raw magnitude, α = 1) at the last position of plain image queries pushes the model into its refusal — for unsafe **and** safe images alike. A constant steering vector cannot tell them apart; MoRAS scales its intervention by an estimated risk (notebook 03).

# %%
from moras_interp.activations import steer

text_unsafe, text_safe = session.text_queries()  # N text-only requests per class, in the organism's words
text = [dict(image=None, text=q.question, label=q.label) for q in text_unsafe + text_safe]
text_store = collect_activations(model, text, names="blocks.*.hook_resid_post", positions="last", batch_size=16)
refusal = class_activations(text_store, "unsafe", "safe").direction("diff_of_means", normalise=False)
seps["text-only"] = layer_separability(class_activations(text_store, "unsafe", "safe"))
layer = model.n_layers // 2
probe = unsafe[:3] + safe[:3]
batch = model.prepare([q.image for q in probe], [q.question for q in probe])
before = model.generate(batch, max_new_tokens=16).texts
with steer(model, refusal, alpha=1.0, positions="last", layers=[layer], layouts=batch.layouts):
    after = model.generate(batch, max_new_tokens=16).texts
pd.DataFrame({"label": [q.label for q in probe], "question": [q.question for q in probe], "unsteered": before,
              f"+ refusal direction @ layer {layer}": after})

# %%
export(separability_figure_by_condition(seps, title=f"{model.model_id}: unsafe vs safe, three conditions"),
       "02_separability_conditions")
