"""Writes the .ipynb notebooks of this folder from the cell lists below (run after editing a notebook's cells).

    python notebooks/build_notebooks.py

Each notebook's first code cell is tagged ``parameters`` (papermill convention) so that
``moras_interp.notebooks.execute`` / papermill can override the model, device, dtype, data and output folder.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

PARAMS = '''MODEL = "toy-llava"      # HF id or local path, e.g. "llava-hf/llava-1.5-7b-hf" (GPU)
DEVICE = None            # e.g. "cuda"
DTYPE = None             # e.g. "bfloat16" on a GPU
DATA = None              # JSONL/CSV with text, image, label, region; None = the organism's held-out scenes
N = {n}                   # examples per class
FIGURES = "../figures"   # where this notebook writes its PNG + HTML figures'''

LOAD = '''import os
from pathlib import Path

import pandas as pd
import torch

import moras_interp as mi
from moras_interp.viz import save_html, save_png

Path(FIGURES).mkdir(parents=True, exist_ok=True)
model = mi.load_model(MODEL, device=DEVICE, dtype=DTYPE)
# cached / resumable results of this notebook, one folder per model and data size
RUNS = Path(FIGURES).resolve().parent / "runs" / f"{Path(str(MODEL)).name}-{Path(str(DATA)).stem}-N{N}"


def export(fig, name):
    """Write a figure as PNG and standalone HTML into FIGURES."""
    save_png(fig, Path(FIGURES) / f"{name}.png")
    save_html(fig, Path(FIGURES) / f"{name}.html", include_plotlyjs="directory")
    return fig


model'''

DATASET = '''from moras_interp.organisms import tasks

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
print(len(unsafe), "unsafe and", len(safe), "safe queries")'''

MORAS_DATA = """from moras_interp.moras import load_examples
from moras_interp.organisms import toy_examples

if DATA is None:
    calib = toy_examples(N, N, split="calib", seed=0)   # labelled pairs for (x0, k), disjoint from eval
    evals = toy_examples(N, N, split="eval", seed=0)
else:
    rows = load_examples(DATA)
    calib, evals = rows[: len(rows) // 2], rows[len(rows) // 2 :]
print(len(calib), "calibration and", len(evals), "evaluation examples")"""


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip())


def code(text: str, tags: list[str] | None = None) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(text.strip(), metadata={"tags": tags} if tags else {})


def notebook(title: str, intro: str, cells: list[nbformat.NotebookNode], n: int = 40) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [md(f"# {title}\n\n{intro}"), code(PARAMS.format(n=n), ["parameters"]), code(LOAD), *cells]
    return nb


NOTEBOOKS: dict[str, nbformat.NotebookNode] = {}


NOTEBOOKS["02_contrastive_directions"] = notebook(
    "02 · Contrastive directions: where do safe and unsafe image queries separate?",
    "The paper's second diagnosis: last-token states of unsafe and safe *image* queries are hard to separate "
    "(low Fisher Discriminant Ratio) when the question is asked plainly, and become separable once the question "
    "is reformulated with the model's own visual context. We collect the residual stream at every layer into a "
    "resumable on-disk store, compute FDR and held-out AUROC per layer for both conditions, derive a "
    "difference-of-means direction and steer with it.",
    [
        code(DATASET),
        md("## Visual contexts (MoRAS stage 1)\nThe model describes each image itself; the reformulated "
           "question is `context + \" \" + question`."),
        code('''from moras_interp.moras.prompts import reformulate
from moras_interp.organisms.analysis import visual_contexts

contexts = visual_contexts(model, [q.image for q in queries], batch_size=16)
plain = [dict(image=q.image, text=q.question, label=q.label) for q in queries]
reform = [dict(image=q.image, text=reformulate(c, q.question), label=q.label) for c, q in zip(contexts, queries)]
pd.DataFrame({"question": [q.question for q in queries[:4]], "context": contexts[:4]})'''),
        md("## Collect last-token residual states\nOne forward pass per batch, values read at "
           "`blocks.{l}.hook_resid_post`; shards are written atomically and a rerun resumes."),
        code('''from moras_interp.activations import (class_activations, collect_activations, layer_separability,
                                      separability_figure_by_condition)

stores = {name: collect_activations(model, data, names="blocks.*.hook_resid_post", positions="last",
                                    batch_size=16, out=RUNS / f"nb02_{name}")
          for name, data in {"plain": plain, "reformulated": reform}.items()}
pairs = {name: class_activations(store, "unsafe", "safe") for name, store in stores.items()}
seps = {name: layer_separability(pair) for name, pair in pairs.items()}
pd.DataFrame({f"FDR {k}": v.fdr.numpy() for k, v in seps.items()}
             | {f"AUROC {k}": v.auroc.numpy() for k, v in seps.items()})'''),
        code('''fig = separability_figure_by_condition(seps, title=f"{model.model_id}: unsafe vs safe image queries")
export(fig, "02_separability")'''),
        md("## A refusal direction from text-only requests, and why it needs a risk gate\nThe same collection on "
           "text-only harmful vs benign requests (which the model does refuse) gives a difference-of-means "
           "*refusal direction*. Adding it (raw magnitude, α = 1) at the last position of plain image queries "
           "pushes the model into its refusal — for unsafe **and** safe images alike. A constant steering vector "
           "cannot tell them apart; MoRAS scales its intervention by an estimated risk (notebook 03)."),
        code('''from moras_interp.activations import steer

text = ([dict(image=None, text=q.question, label="unsafe") for q in tasks.harmful_text_queries(N)]
        + [dict(image=None, text=q.question, label="safe") for q in tasks.benign_text_queries(N)])
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
              f"+ refusal direction @ layer {layer}": after})'''),
        code('''export(separability_figure_by_condition(seps, title=f"{model.model_id}: unsafe vs safe, three conditions"),
       "02_separability_conditions")'''),
    ],
)


NOTEBOOKS["01_attention_misses_visual_risk"] = notebook(
    "01 · Attention misses visual risk",
    "The paper's first diagnosis: when a harmful request refers to *the item in the image*, the last prompt "
    "token's attention over the image does not concentrate on the risky object; once the question carries the "
    "model's own one-sentence visual context (MoRAS stage 1), it does. We trace the exact attention rows of the "
    "last prompt token to every image token (no `output_attentions` dump), draw them over the original image, "
    "and measure the share that lands on the hazard's box, per layer and for the visual head set H_n.",
    [
        code(DATASET),
        md("## One scene, plain vs with visual context"),
        code("""from moras_interp.attention import cross_modal_attention
from moras_interp.moras.prompts import reformulate
from moras_interp.organisms.analysis import visual_contexts

q = next(q for q in unsafe if q.box is not None)
context = visual_contexts(model, [q.image])[0]
plain_batch = model.prepare([q.image], [q.question])
reform_batch = model.prepare([q.image], [reformulate(context, q.question)])
plain = cross_modal_attention(model, plain_batch, query="last")     # rows [1, L, H, 1, keys]
reform = cross_modal_attention(model, reform_batch, query="last")
print("question:", q.question, "| context:", context, "| hazard box:", q.box)
print("rows sum to 1:", bool(torch.allclose(plain.rows.sum(-1), torch.ones(1), atol=1e-4)))"""),
        code("""export(plain.heatmap(0, heads="top-visual", box=q.box), "01_heatmap_plain")"""),
        code("""export(reform.heatmap(0, heads="top-visual", box=q.box), "01_heatmap_with_context")"""),
        code("""export(plain.difference(reform, 0, heads="top-visual", box=q.box), "01_difference")"""),
        md("Which heads look at the image at all? The layer × head grid of image-attention mass (outlined: the "
           "top visual heads), and the head-averaged map per layer."),
        code("""export(plain.layer_head_grid(0), "01_layer_head_grid")"""),
        code("""export(reform.small_multiples(0, box=q.box), "01_small_multiples_with_context")"""),
        md("## Over the held-out set\nShare of image attention on the hazard's box divided by the box's area "
           "share (1.0 = no better than uniform), per layer and for H_n (heads with image mass > 0.2)."),
        code("""from moras_interp.organisms.analysis import attention_study, attention_summary

contexts = visual_contexts(model, [q.image for q in unsafe], batch_size=16)
study = attention_study(model, unsafe, contexts=contexts, threshold=0.2, batch_size=16)
summary = attention_summary(study)
summary.round(3)"""),
        code("""import plotly.graph_objects as go

fig = go.Figure([go.Bar(x=[str(l) for l in summary.index], y=summary[f"ratio ({c})"], name=c)
                 for c in ("plain", "reformulated")])
fig.add_hline(y=1.0, line_dash="dot")
fig.update_layout(title=f"{model.model_id}: attention on the hazard vs its area share (last token)",
                  xaxis_title="layer (H_n = visual head set)", yaxis_title="share / area share")
export(fig, "01_region_share_by_layer")"""),
    ],
)


NOTEBOOKS["03_moras_pipeline"] = notebook(
    "03 · The MoRAS pipeline, one query and then a batch",
    "MoRAS (arXiv 2510.13698) in three stages on the same nnsight graph: (1) the model writes a one-sentence "
    "visual context for the image; (2) with a safety prompt and the reformulated question it greedily produces "
    "N=3 tokens whose next-token distributions are compared (γ-decayed cosine) with those of an *unsafe "
    "prototype* (mean states over text-only harmful requests), giving a risk r after a sigmoid calibration; "
    "(3) it answers the ORIGINAL question while the first N post-final-norm states are interpolated towards the "
    "prototype, h ← h + r (u_t − h). Every intermediate state is kept in a `MoRASTrace`.",
    [
        code(MORAS_DATA),
        md("## Prototype and calibration\n`prepare_moras` builds the unsafe prototype u_t [N, d] from text-only "
           "harmful requests and fits (x0, k) on the labelled pairs by the official recipe "
           "(x0 = mean s, k = ln 99 / (1 − x0)); it also chooses the fixed-strength baseline's r."),
        code("""from moras_interp.moras import MoRAS, prepare_moras

setup = prepare_moras(model, calibration=calib, batch_size=16, progress=False)
moras = MoRAS(model, setup.prototype, setup.calibration)
print(setup.calibration, "| fixed r:", round(setup.fixed_r, 3), f"({setup.fixed_r_rule})")
print("prototype:", tuple(setup.prototype.final.shape), "built from", len(setup.prototype.prompts), "requests")"""),
        md("## One unsafe query through the three stages"),
        code("""ex = next(e for e in evals if e.label == "unsafe")
trace = moras.run([ex.load_image()], [ex.text], max_new_tokens=24, progress=False)[0]
trace                     # renders every stage: prompts as sent, context, stage-2 tokens, s, r, answer, times"""),
        code("""print("visual context :", trace.visual_context)
print("stage-2 tokens :", trace.stage2_tokens, "-> s =", round(trace.similarity, 3), " r =", round(trace.risk, 3))
print("displacement   :", [round(x, 2) for x in trace.displacement_norms])
print("answer         :", trace.answer)
export(trace.summary_figure(), "03_trace_summary")"""),
        md("## A batch: MoRAS against no defence, fixed-strength steering and prompt baselines\n`evaluate` "
           "records one line per (method, example) as it goes (a rerun resumes) and summarises attack success "
           "on unsafe queries and over-refusal on safe ones."),
        code("""from moras_interp.moras import build_methods, evaluate
from moras_interp.moras.methods import TOY_ECSO_CAPTION_PROMPT
from moras_interp.moras.prompts import ECSO_CAPTION_PROMPT
from moras_interp.moras.report import rate_bars, risk_histogram

caption = TOY_ECSO_CAPTION_PROMPT if MODEL == "toy-llava" else ECSO_CAPTION_PROMPT  # the toy only knows stage 1's
methods = build_methods(model, ["none", "moras", "fixed", "adashield", "ecso"], setup, ecso_caption_prompt=caption)
result = evaluate(evals, methods, RUNS / "nb03", batch_size=16, max_new_tokens=24,
                  progress=False, figures=False)
result.summary[["method", "n", "asr", "over_refusal", "mean_risk", "risk_auroc", "mean_latency_s"]].round(3)"""),
        code("""export(rate_bars(result.summary), "03_rates")"""),
        code("""export(risk_histogram(result.records, "moras"), "03_risk_histogram")"""),
    ],
)

NOTEBOOKS["04_ablations"] = notebook(
    "04 · Ablations as one-liners",
    "The reviewers' questions, each a grid over named factors with `moras_interp.ablations.run_grid`: how many "
    "steered tokens N, the decay γ, fixed vs adaptive strength, visual context vs safety prompt, where to steer, "
    "and what happens when the attention to the most-attended visual tokens is removed. Every grid returns a "
    "tidy DataFrame (one row per example × setting), is cached per setting and resumes after an interruption.",
    [
        code(MORAS_DATA),
        code("""from moras_interp.ablations import (attention_evaluator, metric_vs_factor, moras_evaluator, run_grid,
                                   two_factor_heatmap)
from moras_interp.moras import prepare_moras

setup = prepare_moras(model, calibration=calib, batch_size=16, progress=False)
evaluator = moras_evaluator(model, setup.prototype, setup.calibration, max_new_tokens=16, batch_size=16,
                            calibration_data=calib)  # (x0, k) refitted where N, γ change what s measures
runs = RUNS / "nb04"
data = evals"""),
        md("## Fixed vs risk-adaptive strength\nFixed r steers every query alike; MoRAS (fixed_r = None) uses "
           "each query's own risk."),
        code("""df = run_grid({"fixed_r": [None, 0.5, 1.0]}, evaluator, data, out=runs / "fixed_r", progress=False)
export(metric_vs_factor(df, "fixed_r", "refused", color="label",
                        title="refusal rate vs fixed strength (None = MoRAS's adaptive r)"), "04_fixed_vs_adaptive")"""),
        md("## N and γ"),
        code("""df = run_grid({"n_tokens": [1, 3], "gamma": [0.0, 0.3]}, evaluator, data, out=runs / "n_gamma",
              progress=False)
df["error"] = df["refused"] != (df["label"] == "unsafe")
export(two_factor_heatmap(df, "gamma", "n_tokens", "error", title="error rate (refused ≠ unsafe) over N × γ"),
       "04_n_gamma")"""),
        md("## Visual context vs safety prompt in stage 2"),
        code("""df = run_grid({"use_context": [True, False], "safety_prompt_on": [True, False]}, evaluator, data,
              out=runs / "context_prompt", progress=False)
df["setting_name"] = df.apply(lambda r: f"context {'on' if r.use_context else 'off'}, "
                                        f"prompt {'on' if r.safety_prompt_on else 'off'}", axis=1)
export(metric_vs_factor(df, "setting_name", "risk", color="label", title="mean risk r: context vs safety prompt"),
       "04_context_vs_prompt")"""),
        md("## Where to steer\nThe prototype is rebuilt at the chosen residual-stream layer."),
        code("""df = run_grid({"steer_layer": [None, 0, model.n_layers - 1]}, evaluator, data, out=runs / "layer",
              progress=False)
export(metric_vs_factor(df, "steer_layer", "refused", color="label",
                        title="refusal rate vs steering site (None = after the final norm)"), "04_steer_layer")"""),
        md("## Masking the most-attended visual tokens\nAttention edits are addressed by hook name; here the "
           "top fraction of image tokens (by each row's own attention) is removed in every layer."),
        code("""unsafe_with_box = [e for e in data if e.label == "unsafe" and e.region is not None]
att = run_grid({"mask_top_visual": [0.0, 0.1, 0.25], "context": [False, True]},
               attention_evaluator(model, batch_size=16), unsafe_with_box, out=runs / "mask", progress=False)
export(metric_vs_factor(att, "mask_top_visual", "ratio", color="context",
                        title="attention on the hazard / area share vs masked top visual tokens"), "04_mask_top_visual")"""),
    ],
)


def main() -> None:
    for name, nb in NOTEBOOKS.items():
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print("wrote", HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
