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
# # 04 · Ablations as one-liners
#
# The reviewers' questions, each a grid over named factors with `moras_interp.ablations.run_grid`: how many steered tokens N, the decay γ, fixed vs adaptive strength, visual context vs safety prompt, where to steer, and what happens when the attention to the most-attended visual tokens is removed. Every grid returns a tidy DataFrame (one row per example × setting), is cached per setting and resumes after an interruption.

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
from moras_interp.moras import load_examples
from moras_interp.organisms import toy_examples

if DATA is None:
    calib = toy_examples(N, N, split="calib", seed=0)   # labelled pairs for (x0, k), disjoint from eval
    evals = toy_examples(N, N, split="eval", seed=0)
else:
    rows = load_examples(DATA)
    calib, evals = rows[: len(rows) // 2], rows[len(rows) // 2 :]
print(len(calib), "calibration and", len(evals), "evaluation examples")

# %%
from moras_interp.ablations import (attention_evaluator, metric_vs_factor, moras_evaluator, run_grid,
                                   two_factor_heatmap)
from moras_interp.moras import prepare_moras

setup = prepare_moras(model, calibration=calib, batch_size=16, progress=False)
evaluator = moras_evaluator(model, setup.prototype, setup.calibration, max_new_tokens=16, batch_size=16,
                            calibration_data=calib)  # (x0, k) refitted where N, γ change what s measures
runs = RUNS / "nb04"
data = evals

# %% [markdown]
# ## Fixed vs risk-adaptive strength
# Fixed r steers every query alike; MoRAS (fixed_r = None) uses each query's own risk.

# %%
df = run_grid({"fixed_r": [None, 0.5, 1.0]}, evaluator, data, out=runs / "fixed_r", progress=False)
export(metric_vs_factor(df, "fixed_r", "refused", color="label",
                        title="refusal rate vs fixed strength (None = MoRAS's adaptive r)"), "04_fixed_vs_adaptive")

# %% [markdown]
# ## N and γ

# %%
df = run_grid({"n_tokens": [1, 3], "gamma": [0.0, 0.3]}, evaluator, data, out=runs / "n_gamma",
              progress=False)
df["error"] = df["refused"] != (df["label"] == "unsafe")
export(two_factor_heatmap(df, "gamma", "n_tokens", "error", title="error rate (refused ≠ unsafe) over N × γ"),
       "04_n_gamma")

# %% [markdown]
# ## Visual context vs safety prompt in stage 2

# %%
df = run_grid({"use_context": [True, False], "safety_prompt_on": [True, False]}, evaluator, data,
              out=runs / "context_prompt", progress=False)
df["setting_name"] = df.apply(lambda r: f"context {'on' if r.use_context else 'off'}, "
                                        f"prompt {'on' if r.safety_prompt_on else 'off'}", axis=1)
export(metric_vs_factor(df, "setting_name", "risk", color="label", title="mean risk r: context vs safety prompt"),
       "04_context_vs_prompt")

# %% [markdown]
# ## Where to steer
# The prototype is rebuilt at the chosen residual-stream layer.

# %%
df = run_grid({"steer_layer": [None, 0, model.n_layers - 1]}, evaluator, data, out=runs / "layer",
              progress=False)
export(metric_vs_factor(df, "steer_layer", "refused", color="label",
                        title="refusal rate vs steering site (None = after the final norm)"), "04_steer_layer")

# %% [markdown]
# ## Masking the most-attended visual tokens
# Attention edits are addressed by hook name; here the top fraction of image tokens (by each row's own attention) is removed in every layer.

# %%
unsafe_with_box = [e for e in data if e.label == "unsafe" and e.region is not None]
att = run_grid({"mask_top_visual": [0.0, 0.1, 0.25], "context": [False, True]},
               attention_evaluator(model, batch_size=16), unsafe_with_box, out=runs / "mask", progress=False)
export(metric_vs_factor(att, "mask_top_visual", "ratio", color="context",
                        title="attention on the hazard / area share vs masked top visual tokens"), "04_mask_top_visual")
