"""``moras-interp moras``: evaluate MoRAS against baselines on a labelled set; table + figures, resumable.

Example (the shipped organism, its held-out generator, CPU, about a minute)::

    moras-interp moras --model toy-llava --data toy --methods none,moras,fixed,adashield,ecso --out out/moras

A real model with user files::

    moras-interp moras --model llava-hf/llava-1.5-7b-hf --device cuda --dtype bfloat16 \\
        --data figstep.csv --format figstep --image-root figstep/images --calibration llava-1.5-7b --out out/fs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moras_interp.cli.common import add_model_args, model_from_args


def _is_toy(args: argparse.Namespace) -> bool:
    return str(args.model) == "toy-llava" or str(args.data) == "toy"


def _run(args: argparse.Namespace) -> int:
    from moras_interp.eval.judge import KeywordJudge
    from moras_interp.moras.evaluate import evaluate
    from moras_interp.moras.examples import load_examples
    from moras_interp.moras.methods import METHODS, TOY_ECSO_CAPTION_PROMPT, build_methods, prepare_moras
    from moras_interp.moras.pipeline import MoRASConfig
    from moras_interp.moras.prompts import ECSO_CAPTION_PROMPT
    from moras_interp.moras.prototype import read_prompt_file

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        print(f"error: unknown method(s) {bad}; choose from {','.join(METHODS)}", file=sys.stderr)
        return 2
    examples = load_examples(args.data, fmt=args.format, image_root=args.image_root, limit=args.limit,
                             seed=args.seed, toy_n=args.toy_n)
    model = model_from_args(args)
    cfg = MoRASConfig(n_tokens=args.n_tokens, gamma=args.gamma)
    out = Path(args.out)
    setup = None
    if any(m in ("moras", "fixed") for m in names):
        cal_spec: object = args.calibration
        if cal_spec is None:
            if not _is_toy(args):
                print("error: MoRAS needs --calibration: a preset (llava-1.5-7b, llava-1.5-13b), a labelled "
                      ".jsonl/.csv file, or 'toy' (the organism's calibration stream)", file=sys.stderr)
                return 2
            cal_spec = "toy"
        if cal_spec == "toy":
            from moras_interp.organisms.examples import toy_examples

            cal_spec = toy_examples(args.calibration_n, args.calibration_n, args.seed, split="calib")
        elif isinstance(cal_spec, str) and Path(cal_spec).expanduser().is_file():
            cal_spec = load_examples(cal_spec, image_root=args.image_root)
        prompts = read_prompt_file(args.harmful_prompts) if args.harmful_prompts else None
        fixed = args.fixed_r if args.fixed_r == "auto" else float(args.fixed_r)
        setup = prepare_moras(model, calibration=cal_spec, out=out, harmful_prompts=prompts,  # type: ignore[arg-type]
                              fit=args.calibration_method, fixed_r=fixed, config=cfg, batch_size=args.batch_size,
                              progress=not args.quiet)
        c = setup.calibration
        print(f"calibration: x0={c.x0:.4f} k={c.k:.3f} ({c.method}"
              + (f", AUROC {c.auroc:.3f}, operating point TPR {c.tpr:.2f} / FPR {c.fpr:.2f}" if c.auroc is not None else "")
              + f"); fixed r = {setup.fixed_r:.3f} ({setup.fixed_r_rule})")
    caption = args.ecso_caption_prompt or (TOY_ECSO_CAPTION_PROMPT if _is_toy(args) else ECSO_CAPTION_PROMPT)
    methods = build_methods(model, names, setup, config=cfg, ecso_caption_prompt=caption,
                            adashield_position=args.adashield_position)
    judge = KeywordJudge(match_prefix_only=args.judge == "prefix")
    info = {"model": args.model, "data": str(args.data), "format": args.format, "limit": args.limit,
            "methods": names, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
            "n_tokens": args.n_tokens, "gamma": args.gamma, "judge": args.judge, "ecso_caption_prompt": caption,
            "setup": setup.to_dict() if setup is not None else None}
    res = evaluate(examples, methods, out, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                   judge=judge, progress=not args.quiet, figures=not args.no_figures, run_info=info)
    print(res.markdown())
    print(f"wrote {res.files['csv']}, {res.files['json']} and {len(res.files) - 4} figure files under {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``moras`` sub-command."""
    p = sub.add_parser("moras", help="evaluate MoRAS vs baselines (ASR, over-refusal, utility, risk, latency)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True, help="a .jsonl/.csv/.json file, or 'toy' (the organism's held-out set)")
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "csv", "figstep", "mm-safetybench", "xstest"])
    p.add_argument("--image-root", default=None, help="folder of the images referenced by the data file")
    p.add_argument("--methods", default="none,moras,fixed,adashield,ecso",
                   help="comma-separated: none, moras, fixed, adashield, ecso")
    p.add_argument("--out", required=True, help="results folder (re-running resumes)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--calibration", default=None,
                   help="preset (llava-1.5-7b, llava-1.5-13b), a labelled .jsonl/.csv file, or 'toy' (default for the organism)")
    p.add_argument("--calibration-method", default="official", choices=["official", "logistic"])
    p.add_argument("--calibration-n", type=int, default=20, help="per class, for --calibration toy")
    p.add_argument("--harmful-prompts", default=None, help="prototype prompts file (.txt one per line, or .json list)")
    p.add_argument("--fixed-r", default="auto",
                   help="r of the fixed-strength baseline, or 'auto' = mean calibrated r of the unsafe calibration queries")
    p.add_argument("--n-tokens", type=int, default=3, help="N: steps scored in stage 2 and steered in stage 3")
    p.add_argument("--gamma", type=float, default=0.3, help="decay γ of the stage-2 distributions")
    p.add_argument("--ecso-caption-prompt", default=None, help="ECSO captioning prompt ({question} is substituted)")
    p.add_argument("--adashield-position", default="append", choices=["append", "prepend"])
    p.add_argument("--judge", default="keyword", choices=["keyword", "prefix"],
                   help="refusal judge: refusal prefixes + keywords anywhere, or prefixes only")
    p.add_argument("--toy-n", type=int, default=20, help="examples per class for --data toy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_run)
