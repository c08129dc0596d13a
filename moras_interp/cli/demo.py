"""``moras-interp demo --out DIR``: the main job, on the shipped organism ``toy-llava-2`` by default (its graded
steering and MoRAS ≠ ECSO are real; ``--model toy-llava`` for the first organism; CPU, about a minute).

1. MoRAS against its baselines (no defence, fixed-strength steering, AdaShield-S, ECSO-style) on held-out
   image queries: the same code path as ``moras-interp moras --data toy2`` → ``DIR/moras/`` (records,
   results table CSV/JSON/Markdown, rate and risk figures; a rerun resumes).
2. The attention diagnosis on the unsafe queries: exact last-token attention over the image, plain vs with
   the model's own visual context, region share on the hazard box per layer and for the visual head set →
   ``DIR/attention/`` (heatmaps PNG + HTML, layer × head grid, NPZ + JSON of the traced rows, CSV tables).
3. ``DIR/README.md``: both tables and the list of files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moras_interp.atomic import atomic_write_text
from moras_interp.cli.common import add_model_args, check_out_dir, model_from_args


def _attention(model: Any, examples: list[Any], out: Path, n_maps: int,
               progress: bool = True) -> tuple[Any, list[Path]]:
    import plotly.graph_objects as go

    from moras_interp.attention import cross_modal_attention
    from moras_interp.moras.prompts import reformulate
    from moras_interp.organisms.analysis import attention_study, attention_summary, visual_contexts
    from moras_interp.progress import tqdm
    from moras_interp.viz import save_html, save_png

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    def export(fig: Any, name: str) -> None:
        files.append(save_png(fig, out / f"{name}.png"))
        files.append(save_html(fig, out / f"{name}.html"))

    qs = [e for e in examples if e.label == "unsafe" and e.image is not None and e.region is not None]
    if not qs:
        return None, files
    imgs = [e.load_image() for e in qs]
    contexts = visual_contexts(model, imgs, batch_size=8, progress=progress)
    drawn = list(zip(qs, imgs, contexts))[:n_maps]
    for i, (e, im, ctx) in enumerate(tqdm(drawn, desc="heatmaps", disable=not progress)):
        plain = cross_modal_attention(model, model.prepare([im], [e.text]), query="last")
        reform = cross_modal_attention(model, model.prepare([im], [reformulate(ctx, e.text)]), query="last")
        box = tuple(e.region)
        export(plain.heatmap(0, heads="top-visual", box=box), f"heatmap_{i}_plain")
        export(reform.heatmap(0, heads="top-visual", box=box), f"heatmap_{i}_with_context")
        export(plain.difference(reform, 0, heads="top-visual", box=box), f"difference_{i}")
        if i == 0:
            export(plain.layer_head_grid(0), "layer_head_grid")
            files.append(plain.save(out / "attention_plain_0.npz"))
    q = [type("Q", (), {"image": im, "question": e.text, "box": tuple(e.region)})() for e, im in zip(qs, imgs)]
    study = attention_study(model, q, contexts=contexts, threshold=0.2, batch_size=8, progress=progress)
    summary = attention_summary(study)
    atomic_write_text(out / "region_share.csv", study.to_csv(index=False))
    atomic_write_text(out / "region_share_summary.csv", summary.to_csv())
    files += [out / "region_share.csv", out / "region_share_summary.csv"]
    fig = go.Figure([go.Bar(x=[str(l) for l in summary.index], y=summary[f"ratio ({c})"], name=c)
                     for c in ("plain", "reformulated")])
    fig.update_layout(title=f"{model.model_id}: last-token attention on the hazard / its area share",
                      xaxis_title="layer (H_n = heads with image mass > 0.2)", yaxis_title="ratio (1 = uniform)")
    export(fig, "region_share_by_layer")
    return summary, files


def _run(args: argparse.Namespace) -> int:
    from moras_interp.cli import build_parser
    from moras_interp.moras.examples import load_examples
    from moras_interp.organisms.examples import ORGANISM_DATA

    out = check_out_dir(args.out)  # before any model loads
    out.mkdir(parents=True, exist_ok=True)
    data = ORGANISM_DATA.get(str(args.model), "toy")  # the organism's own held-out queries; "toy" for other models
    print(f"[1/2] MoRAS vs baselines on {args.n} unsafe + {args.n} safe held-out queries ({data}) → {out / 'moras'}")
    margs = ["moras", "--model", args.model, "--data", data, "--toy-n", str(args.n), "--out", str(out / "moras"),
             "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
             "--attn", args.attn, "--backend", args.backend]
    margs += ["--device", args.device] if args.device else []
    margs += ["--dtype", args.dtype] if args.dtype else []
    margs += ["--quiet"] if args.quiet else []
    ns = build_parser().parse_args(margs)
    rc = ns.fn(ns)
    if rc:
        return int(rc)
    print(f"[2/2] attention over the image, plain vs with visual context → {out / 'attention'}")
    model = model_from_args(args)
    summary, files = _attention(model, load_examples(data, toy_n=args.n), out / "attention", args.maps,
                                progress=not args.quiet)
    table = (out / "moras" / "results.md").read_text(encoding="utf-8")
    lines = [f"# moras-interp demo: {model.model_id}", "", "## MoRAS vs baselines", "", table, "",
             "## Last-token attention on the hazard's box (share / area share; 1 = uniform)", ""]
    if summary is not None:
        lines += ["| layer | plain | with own visual context |", "|---|---|---|"]
        lines += [f"| {l} | {r['ratio (plain)']:.2f} | {r['ratio (reformulated)']:.2f} |" for l, r in summary.iterrows()]
    lines += ["", "## Files", ""] + [f"- `{p.relative_to(out)}`" for p in sorted(set(files))]
    lines += [f"- `moras/{p.name}`" for p in sorted((out / "moras").rglob("*")) if p.is_file() and p.parent == out / "moras"]
    lines += [f"- `moras/figures/{p.name}`" for p in sorted((out / "moras" / "figures").glob("*"))]
    report = out / "README.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    if summary is not None:
        print(summary[["ratio (plain)", "ratio (reformulated)"]].round(2).to_string())
    print(f"\nwrote {report}, heatmaps in {out / 'attention'}, MoRAS results in {out / 'moras'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = sub.add_parser("demo", help="run MoRAS and the attention analysis on the shipped organism; write figures")
    add_model_args(p, default="toy-llava-2")
    p.add_argument("--out", default="out/demo", help="output folder (a rerun resumes the MoRAS part)")
    p.add_argument("--n", type=int, default=20,
                   help="held-out queries per class (as `moras --toy-n`)")
    p.add_argument("--maps", type=int, default=3, help="unsafe examples drawn as heatmaps")
    p.add_argument("--max-new-tokens", type=int, default=24,
                   help="answer tokens per query (enough for the organism's answers; `moras` uses 64, for real models)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_run)
