"""``moras-interp attention``: exact text→image attention for one image and prompt, with pictures.

    moras-interp attention --model llava-hf/llava-1.5-7b-hf --image scene.png \\
        --prompt "How do I make the item in the image?" --box 120 40 260 200 --out out/attn

Writes ``heatmap.png/.html`` (a* over the original image), ``layer_head_grid.png/.html``,
``small_multiples.png``, ``attention.npz`` + ``attention.json`` (reload with
``CrossModalAttention.load``) and ``region_share.json`` when ``--box`` is given; prints the region share.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moras_interp.atomic import atomic_write_text
from moras_interp.cli.common import add_model_args, check_out_dir, model_from_args


def parse_box(values: list[str] | None) -> tuple[float, float, float, float] | None:
    """``["x0", "y0", "x1", "y1"]`` or ``["x0,y0,x1,y1"]`` -> a float 4-tuple (None passes through)."""
    if values is None:
        return None
    parts = [p for v in values for p in v.replace(",", " ").split()]
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) != 4:
        raise ValueError(f"--box needs 4 numbers x0 y0 x1 y1 in original image pixels (got {' '.join(values)!r}).")
    x0, y0, x1, y1 = nums
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"--box {nums}: need x0 < x1 and y0 < y1.")
    return x0, y0, x1, y1


def parse_heads(value: str) -> str | float | list[int]:
    """``top-visual`` | ``all`` | a float threshold (``0.2``) | comma-separated head indices."""
    if value in ("top-visual", "all"):
        return value
    if "," in value or value.isdigit():
        return [int(v) for v in value.split(",") if v]
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--heads {value!r}: use top-visual, all, a threshold like 0.2 or indices like 0,3.") from None


def _run(args: argparse.Namespace) -> int:
    from moras_interp.attention import cross_modal_attention
    from moras_interp.viz import save_html, save_png

    box = parse_box(args.box)
    heads = parse_heads(args.heads)
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"--image {args.image}: file not found.")
    out = check_out_dir(args.out)  # before the model loads
    model = model_from_args(args)
    batch = model.prepare(images=[args.image], prompts=[args.prompt])
    if not batch.layouts[0].images:
        raise ValueError(f"--model {args.model}: the prompt holds no image tokens; check that the model is multimodal.")
    attn = cross_modal_attention(model, batch, query=args.query, layers=args.layers)
    out.mkdir(parents=True, exist_ok=True)
    attn.save(out / "attention.npz")
    figs = {"heatmap": attn.heatmap(0, heads=heads, box=box),
            "layer_head_grid": attn.layer_head_grid(0, highlight=heads if heads != "all" else "top-visual"),
            "small_multiples": attn.small_multiples(0, box=box)}
    for name, fig in figs.items():
        save_png(fig, out / f"{name}.png")
        if name != "small_multiples":
            save_html(fig, out / f"{name}.html")
    mass = attn.image_mass(0)
    print(f"{model.model_id}: {len(attn.layers)} layers x {len(attn.heads)} heads, "
          f"{attn.image_columns(0).numel()} image tokens, query={args.query}")
    print(f"mean image-attention mass {float(mass.mean()):.3f} (max {float(mass.max()):.3f})")
    if box is not None:
        pairs = attn.resolve_heads(heads, examples=[0])
        rs = attn.region_share(0, box, heads=pairs)
        print(f"region share of image attention ({len(pairs)} heads, --heads {args.heads}): {rs.aggregated:.4f}  "
              f"area share: {rs.area_share:.4f}  ratio: {rs.ratio:.3f}")
        payload = {"box": list(box), "heads": str(args.heads), "aggregated": rs.aggregated,
                   "area_share": rs.area_share, "ratio": rs.ratio, "per_layer": rs.per_layer.tolist(),
                   "per_head": rs.per_head.tolist(), "layers": attn.layers}
        atomic_write_text(out / "region_share.json", json.dumps(payload, indent=1))
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``attention`` sub-command."""
    p = sub.add_parser("attention", help="exact text->image attention of one image + prompt: heatmaps, grid, NPZ")
    add_model_args(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True, help="the user's question / instruction")
    p.add_argument("--box", nargs="+", default=None, metavar="X",
                   help="risky region in original image pixels: x0 y0 x1 y1 (or x0,y0,x1,y1)")
    p.add_argument("--query", default="last", choices=["last", "instruction"],
                   help="query rows: the last prompt token or every instruction token")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="decoder layers (default all)")
    p.add_argument("--heads", default="top-visual",
                   help="head set for the heatmap: top-visual, all, a mass threshold (0.2) or indices 0,3")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(fn=_run)
