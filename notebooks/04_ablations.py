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
ORGANISM = "toy-llava-2"  # shipped model organism (graded steering; see MODEL_CARD_toy-llava-2.md): model + data
MODEL = None             # HF id or local path instead of the organism, e.g. llava-hf/llava-1.5-7b-hf (GPU)
DEVICE = None            # e.g. cuda
DTYPE = None             # e.g. bfloat16 on a GPU
DATA = None              # JSONL/CSV with text, image, label, region; None = held-out scenes of the organism
N = 40                   # examples per class
FIGURES = "../figures"   # PNG + HTML figures go here; a relative path is relative to this notebook
PLOTLYJS = True          # HTML figures: True = standalone (plotly.js inlined), or cdn, or directory

# %%
from moras_interp import notebooks

# loads the model, resolves FIGURES (relative to this notebook) and RUNS, silences third-party output
session = notebooks.setup(ORGANISM, model=MODEL, device=DEVICE, dtype=DTYPE, data=DATA, n=N,
                          figures=FIGURES, plotlyjs=PLOTLYJS)
model, FIGURES, RUNS, export = session.model, session.figures, session.runs, session.export
model

# %%
# N per class each: calib fits (x0, k) and is disjoint from eval (or the two halves of DATA)
calib, evals = session.examples()
print(len(calib), "calibration and", len(evals), "evaluation examples")

# %%
from moras_interp.ablations import (attention_evaluator, metric_vs_factor, moras_evaluator, run_grid,
                                   two_factor_heatmap)
from moras_interp.moras import prepare_moras

setup = prepare_moras(model, calibration=calib, batch_size=16, progress=True)
evaluator = moras_evaluator(model, setup.prototype, setup.calibration, max_new_tokens=16, batch_size=16,
                            calibration_data=calib)  # (x0, k) refitted where N, γ change what s measures
runs = RUNS / "nb04"
data = evals

# %% [markdown]
# ## Fixed vs risk-adaptive strength
# Fixed r steers every query alike; MoRAS (fixed_r = None) uses each query's own risk. On toy-llava-2 the fixed-r curve is graded between r = 0 and 0.3 (its card); on toy-llava it is a switch at r ≈ 0.5.

# %%
df = run_grid({"fixed_r": [None, 0.0, 0.1, 0.2, 0.3, 0.5, 1.0]}, evaluator, data, out=runs / "fixed_r", progress=True)
export(metric_vs_factor(df, "fixed_r", "refused", color="label",
                        title="refusal rate vs fixed strength (None = MoRAS's adaptive r)"), "04_fixed_vs_adaptive")

# %% [markdown]
# ## N and γ

# %%
df = run_grid({"n_tokens": [1, 3], "gamma": [0.0, 0.3]}, evaluator, data, out=runs / "n_gamma",
              progress=True)
df["error"] = df["refused"] != (df["label"] == "unsafe")
export(two_factor_heatmap(df, "gamma", "n_tokens", "error", title="error rate (refused ≠ unsafe) over N × γ"),
       "04_n_gamma")

# %% [markdown]
# ## Visual context vs safety prompt in stage 2

# %%
df = run_grid({"use_context": [True, False], "safety_prompt_on": [True, False]}, evaluator, data,
              out=runs / "context_prompt", progress=True)
df["setting_name"] = df.apply(lambda r: f"context {'on' if r.use_context else 'off'}, "
                                        f"prompt {'on' if r.safety_prompt_on else 'off'}", axis=1)
export(metric_vs_factor(df, "setting_name", "risk", color="label", title="mean risk r: context vs safety prompt"),
       "04_context_vs_prompt")

# %% [markdown]
# ## Where to steer
# The prototype is rebuilt at the chosen residual-stream layer.

# %%
df = run_grid({"steer_layer": [None, 0, model.n_layers - 1]}, evaluator, data, out=runs / "layer",
              progress=True)
export(metric_vs_factor(df, "steer_layer", "refused", color="label",
                        title="refusal rate vs steering site (None = after the final norm)"), "04_steer_layer")

# %% [markdown]
# ## Masking the most-attended visual tokens
# Attention edits are addressed by hook name; here the top fraction of image tokens (by each row's own attention) is removed in every layer.

# %%
unsafe_with_box = [e for e in data if e.label == "unsafe" and e.region is not None]
att = run_grid({"mask_top_visual": [0.0, 0.1, 0.25], "context": [False, True]},
               attention_evaluator(model, batch_size=16), unsafe_with_box, out=runs / "mask", progress=True)
export(metric_vs_factor(att, "mask_top_visual", "ratio", color="context",
                        title="attention on the hazard / area share vs masked top visual tokens"), "04_mask_top_visual")
