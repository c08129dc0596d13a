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
# # 03 · The MoRAS pipeline, one query and then a batch
#
# MoRAS (arXiv 2510.13698) in three stages on the same nnsight graph: (1) the model writes a one-sentence visual context for the image; (2) with a safety prompt and the reformulated question it greedily produces N=3 tokens whose next-token distributions are compared (γ-decayed cosine) with those of an *unsafe prototype* (mean states over text-only harmful requests), giving a risk r after a sigmoid calibration; (3) it answers the ORIGINAL question while the first N post-final-norm states are interpolated towards the prototype, h ← h + r (u_t − h). Every intermediate state is kept in a `MoRASTrace`.

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

# %% [markdown]
# ## Prototype and calibration
# `prepare_moras` builds the unsafe prototype u_t [N, d] from text-only harmful requests and fits (x0, k) on the labelled pairs by the official recipe (x0 = mean s, k = ln 99 / (1 − x0)); it also chooses the fixed-strength baseline's r.

# %%
from moras_interp.moras import MoRAS, prepare_moras

setup = prepare_moras(model, calibration=calib, batch_size=16, progress=True)
moras = MoRAS(model, setup.prototype, setup.calibration)
print(setup.calibration, "| fixed r:", round(setup.fixed_r, 3), f"({setup.fixed_r_rule})")
print("prototype:", tuple(setup.prototype.final.shape), "built from", len(setup.prototype.prompts), "requests")

# %% [markdown]
# ## One unsafe query through the three stages

# %%
ex = next(e for e in evals if e.label == "unsafe")
trace = moras.run([ex.load_image()], [ex.text], max_new_tokens=24, progress=True)[0]
trace                     # renders every stage: prompts as sent, context, stage-2 tokens, s, r, answer, times

# %%
print("visual context :", trace.visual_context)
print("stage-2 tokens :", trace.stage2_tokens, "-> s =", round(trace.similarity, 3), " r =", round(trace.risk, 3))
print("displacement   :", [round(x, 2) for x in trace.displacement_norms])
print("answer         :", trace.answer)
export(trace.summary_figure(), "03_trace_summary")

# %% [markdown]
# ## Trace viewer
# A few unsafe and safe queries, one at a time (slider): visual context, stage-2 distributions, s, r, and the steered answer next to plain generation without steering. Standalone HTML; `trace_viewer_widget` is the Jupyter version.

# %%
from moras_interp.moras.viewer import trace_viewer
from moras_interp.viz.explorer import save_explorer_html

few = [e for e in evals if e.label == "unsafe"][:3] + [e for e in evals if e.label == "safe"][:3]
few_images = [e.load_image() for e in few]
traces = moras.run(few_images, [e.text for e in few], max_new_tokens=24, progress=False)
unsteered = model.generate(model.prepare(few_images, [e.text for e in few]), max_new_tokens=24).texts
viewer = save_explorer_html(trace_viewer(traces, unsteered), FIGURES / "03_trace_viewer.html",
                            include_plotlyjs=PLOTLYJS)
print("viewer:", viewer.name, "in FIGURES")

# %% [markdown]
# ## Your own reads and edits inside the run
# `moras.trace` runs the same pipeline on the nnsight backend (one intervention graph per generation; the same results as the torch-hook default) and lets you read or edit any named hook at chosen steps of a stage. Here we read the residual stream after layer 1 at the prefill and the first decode step of the answer, and add a push there at the prefill; what the reads saved lands in the trace.

# %%
import torch

push_dir = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))


def push(value, ctx):  # any fn(value, ctx) -> new value; ctx.step: 0 = prefill
    return value + 6.0 * push_dir


with moras.trace([ex.load_image()], [ex.text], backend="nnsight", max_new_tokens=24, progress=False) as run:
    run.stage("answer").write("blocks.1.hook_resid_post", push, steps="prefill")
    run.stage("answer").read("blocks.1.hook_resid_post", steps=[0, 1])
edited = run.traces[0]
print("answer without the push:", trace.answer)
print("answer with the push   :", edited.answer)
print({k: tuple(v.shape) for k, v in edited.reads.items()})

# %% [markdown]
# ## A batch: MoRAS against no defence, fixed-strength steering and prompt baselines
# `evaluate` records one line per (method, example) as it goes (a rerun resumes) and summarises attack success on unsafe queries and over-refusal on safe ones.

# %%
from moras_interp.moras import build_methods, evaluate
from moras_interp.moras.report import rate_bars, risk_histogram

caption = session.ecso_caption_prompt  # toy-llava only knows the stage-1 prompt; other models the paper's
methods = build_methods(model, ["none", "moras", "fixed", "adashield", "ecso"], setup, ecso_caption_prompt=caption)
result = evaluate(evals, methods, RUNS / "nb03", batch_size=16, max_new_tokens=24,
                  progress=True, figures=False)
result.summary[["method", "n", "asr", "over_refusal", "mean_risk", "risk_auroc", "mean_latency_s"]].round(3)

# %%
export(rate_bars(result.summary), "03_rates")

# %%
export(risk_histogram(result.records, "moras"), "03_risk_histogram")
