"""``moras-interp moras``: evaluate MoRAS against baselines on a labelled set; table + figures, resumable.

Example (the shipped organism, its held-out generator, CPU, about a minute)::

    moras-interp moras --model toy-llava --data toy --methods none,moras,fixed,adashield,ecso --out out/moras

A real model with user files, as the authors run it (conv_llava_v1 system message, 512 answer tokens, their
50 prototype prompts brought as a file, their LLaVA-1.5 constants)::

    moras-interp moras --setup authors --model llava-hf/llava-1.5-7b-hf --device cuda --dtype bfloat16 \\
        --data figstep.csv --format figstep --image-root figstep/images \\
        --harmful-prompts authors_prompts.txt --calibration llava-1.5-7b --out out/fs
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from moras_interp import distributed
from moras_interp.cli.common import add_model_args, check_out_dir, model_from_args
from moras_interp.eval.judge import JUDGES
from moras_interp.organisms.examples import ORGANISM_DATA


def _toy_source(args: argparse.Namespace) -> str | None:
    """The organism data source ("toy" / "toy2") that ``--data`` or ``--model`` names, else None."""
    data = str(getattr(args, "data", ""))
    return data if data in ORGANISM_DATA.values() else ORGANISM_DATA.get(str(args.model))


def _is_toy(args: argparse.Namespace) -> bool:
    return _toy_source(args) is not None


def _check_out(args: argparse.Namespace, names: list[str], ids: list[str]) -> None:
    """Cheap ``--out`` checks before loading the model: a folder (not a file), writable unless every
    (method, example) is already recorded (a finished read-only folder can still be summarised), and not
    holding records of a run with other options (the full identity check follows in ``evaluate``)."""
    from moras_interp.moras.evaluate import RecordStore

    out = Path(args.out).expanduser()
    records = out / "records.jsonl"
    finished = False
    if records.is_file() and not os.access(out, os.W_OK):
        done = RecordStore(records).done()
        finished = all((m, i) in done for m in names for i in ids)
    has_records = records.is_file() and records.stat().st_size > 0
    cfg = config_from_args(args)
    cheap = {"model": args.model, "data": str(args.data), "format": args.format,
             "max_new_tokens": cfg.max_new_tokens, "n_tokens": cfg.n_tokens, "gamma": cfg.gamma,
             "judge": args.judge}
    check_out_dir(out, may_be_read_only=finished, run_info=cheap if has_records else None,
                  overwrite=bool(getattr(args, "overwrite", False)))


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`MoRASConfig` of ``--setup`` with every explicitly given option applied on top."""
    from moras_interp.moras.config import SETUPS, resolve_system

    cfg = SETUPS[args.setup]()
    for name in ("n_tokens", "gamma", "stage2_eos", "score", "mapping", "max_new_tokens"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.system is not None:
        cfg.system = resolve_system(args.system)
    cfg.check()
    return cfg


def method_names(args: argparse.Namespace) -> list[str]:
    """The ``--methods`` list; ``ValueError`` naming the bad ones (unknown or no method)."""
    from moras_interp.moras.methods import METHODS

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise ValueError(f"--methods: unknown method(s) {bad}; choose from {','.join(METHODS)}")
    if any(m in ("moras", "fixed") for m in names) and args.calibration is None and not _is_toy(args):
        raise ValueError("MoRAS needs --calibration: a preset (llava-1.5-7b, llava-1.5-13b), a labelled "
                         ".jsonl/.csv file, or 'toy' (the organism's calibration stream)")
    if args.fixed_r != "auto":  # checked before the model loads
        try:
            r = float(args.fixed_r)
        except ValueError:
            raise ValueError(f"--fixed-r {args.fixed_r!r}: give a number in [0, 1] or 'auto'.") from None
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"--fixed-r {args.fixed_r}: r must be in [0, 1] (0 = no steering, 1 = replace by u_t).")
    return names


def methods_from_args(args: argparse.Namespace, model: Any, names: list[str], out: Path,
                      calibration: Any = None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Build the named methods as the ``moras`` options say (shared with ``moras-interp suite``).

    The prototype and calibration are fitted (or reloaded) in ``out``; ``calibration`` (labelled examples)
    replaces ``--calibration``. Returns (methods, judge, run info).
    """
    from moras_interp.eval.judge import make_judge
    from moras_interp.moras.examples import load_examples
    from moras_interp.moras.methods import TOY_ECSO_CAPTION_PROMPT, build_methods, prepare_moras
    from moras_interp.moras.prompts import ECSO_CAPTION_PROMPT
    from moras_interp.moras.prototype import read_prompt_file

    cfg = config_from_args(args)
    setup = None
    if any(m in ("moras", "fixed") for m in names):
        cal_spec: object = calibration if calibration is not None else args.calibration
        if cal_spec is None:  # the organism (checked in method_names)
            cal_spec = _toy_source(args)
        if cal_spec in ORGANISM_DATA.values():
            cal_spec = load_examples(str(cal_spec), seed=args.seed, toy_n=args.calibration_n, split="calib")
        elif isinstance(cal_spec, str) and Path(cal_spec).expanduser().is_file():
            cal_spec = load_examples(cal_spec, image_root=getattr(args, "image_root", None))
        prompts = read_prompt_file(args.harmful_prompts) if args.harmful_prompts else None
        fixed = args.fixed_r if args.fixed_r == "auto" else float(args.fixed_r)
        # under torchrun: rank 0 builds the prototype and calibration in out, the other ranks then reload them
        setup = distributed.main_first(lambda: prepare_moras(
            model, calibration=cal_spec, out=out, harmful_prompts=prompts, fit=args.calibration_method,  # type: ignore[arg-type]
            fixed_r=fixed, config=cfg, batch_size=args.batch_size, progress=not args.quiet,
            force_preset=args.force_preset, overwrite=args.overwrite and distributed.info().is_main), "prepare MoRAS")
        c = setup.calibration
        print(f"calibration: x0={c.x0:.4f} k={c.k:.3f} ({c.method}"
              + (f", AUROC {c.auroc:.3f}, operating point TPR {c.tpr:.2f} / FPR {c.fpr:.2f}" if c.auroc is not None else "")
              + f"); fixed r = {setup.fixed_r:.3f} ({setup.fixed_r_rule})")
    caption = args.ecso_caption_prompt or (TOY_ECSO_CAPTION_PROMPT if _is_toy(args) else ECSO_CAPTION_PROMPT)
    methods = build_methods(model, names, setup, config=cfg, ecso_caption_prompt=caption,
                            adashield_position=args.adashield_position)
    judge = make_judge(args.judge)
    info = {"model": args.model, "methods": names, "max_new_tokens": cfg.max_new_tokens,
            "batch_size": args.batch_size, "n_tokens": cfg.n_tokens, "gamma": cfg.gamma, "judge": args.judge,
            "setup_name": args.setup, "system": cfg.system, "stage2_eos": cfg.stage2_eos, "score": cfg.score,
            "mapping": cfg.mapping,
            "ecso_caption_prompt": caption, "setup": setup.to_dict() if setup is not None else None}
    return methods, judge, info


def _run(args: argparse.Namespace) -> int:
    from moras_interp.moras.evaluate import evaluate
    from moras_interp.moras.examples import load_examples

    names = method_names(args)
    examples = load_examples(args.data, fmt=args.format, image_root=args.image_root, limit=args.limit,
                             seed=args.seed, toy_n=args.toy_n)
    _check_out(args, names, [ex.id for ex in examples])  # before the model loads: a bad folder fails at once
    model = model_from_args(args)
    out = Path(args.out)
    methods, judge, info = methods_from_args(args, model, names, out)
    info |= {"data": str(args.data), "format": args.format, "limit": args.limit}
    res = evaluate(examples, methods, out, batch_size=args.batch_size, max_new_tokens=info["max_new_tokens"],
                   judge=judge, progress=not args.quiet, figures=not args.no_figures, run_info=info,
                   seed=args.seed, overwrite=args.overwrite)
    if not distributed.info().is_main:  # under torchrun: rank 0 reports
        return 0
    print(res.markdown())
    if res.n_run == 0 and not os.access(out, os.W_OK):
        print(f"{out} is complete and read-only: summarised its records, wrote nothing")
    else:
        print(f"wrote {res.files['csv']}, {res.files['json']} and {len(res.files) - 4} figure files under {out}")
    return 0


def add_method_args(p: argparse.ArgumentParser) -> None:
    """The method, generation, calibration and judge options (shared with ``moras-interp suite``)."""
    p.add_argument("--methods", default="none,moras,fixed,adashield,ecso",
                   help="comma-separated: none, moras, fixed, adashield, ecso")
    p.add_argument("--overwrite", action="store_true",
                   help="discard the results, prototype and calibration in --out and start afresh")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--setup", default="ours", choices=["ours", "authors"],
                   help="named configuration: 'ours' (project defaults) or 'authors' (snumprlab/moras: conv_llava_v1 "
                        "system message, 512 answer tokens); the options below override it")
    p.add_argument("--system", default=None,
                   help="system prompt in every stage: llava_v1 (conv_llava_v1's), none, or the text itself")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer tokens (default: 64 ours, 512 authors)")
    p.add_argument("--calibration", default=None,
                   help="preset (llava-1.5-7b, llava-1.5-13b), a labelled .jsonl/.csv file, or 'toy' (default for the organism)")
    p.add_argument("--force-preset", action="store_true",
                   help="apply a preset although the prototype was built from other prompts / another system prompt")
    p.add_argument("--calibration-method", default="official", choices=["official", "logistic"])
    p.add_argument("--calibration-n", type=int, default=20, help="per class, for --calibration toy / toy2")
    p.add_argument("--harmful-prompts", default=None, help="prototype prompts file (.txt one per line, or .json list)")
    p.add_argument("--fixed-r", default="auto",
                   help="r of the fixed-strength baseline, or 'auto' = mean calibrated r of the unsafe calibration queries")
    p.add_argument("--n-tokens", type=int, default=None, help="N: steps scored in stage 2 and steered in stage 3 (3)")
    p.add_argument("--gamma", type=float, default=None, help="decay γ of the stage-2 distributions (0.3)")
    p.add_argument("--stage2-eos", default=None, choices=["stop", "block"],
                   help="stage 2 and prototype: stop at EOS (the authors', default) or block EOS until N tokens")
    p.add_argument("--score", default=None, choices=["cosine", "kl", "ce"], help="stage-2 score (default cosine)")
    p.add_argument("--mapping", default=None, choices=["sigmoid", "linear"], help="score → r (default sigmoid)")
    p.add_argument("--ecso-caption-prompt", default=None, help="ECSO captioning prompt ({question} is substituted)")
    p.add_argument("--adashield-position", default="append", choices=["append", "prepend"])
    p.add_argument("--judge", default="keyword", choices=sorted(JUDGES),
                   help="refusal judge (docs/judges.md): keyword = refusal openers in the first two sentences "
                        "(default), prefix = openers at the start only, xstest = XSTest's matcher, "
                        "*-legacy = the former judges")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``moras`` sub-command."""
    p = sub.add_parser("moras", help="evaluate MoRAS vs baselines (ASR, over-refusal, utility, risk, latency)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True, help="a .jsonl/.csv/.json file, or 'toy' (the organism's held-out set)")
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "csv", "figstep", "mm-safetybench", "xstest"])
    p.add_argument("--image-root", default=None, help="folder of the images referenced by the data file")
    p.add_argument("--out", required=True, help="results folder (re-running the same run resumes; another run is "
                                                "refused with the differences)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    p.add_argument("--toy-n", type=int, default=20, help="examples per class for --data toy / toy2")
    add_method_args(p)
    p.set_defaults(fn=_run)
