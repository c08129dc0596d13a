"""``moras-interp suite``: run methods over the paper's evaluation suites, one subfolder each, one combined table.

List the suites and the files each needs::

    moras-interp suite --list

Evaluate (each NAME=ROOT names a suite and the folder holding its files; images may live elsewhere)::

    moras-interp suite figstep=~/FigStep mm-safetybench=~/MM-SafetyBench xstest=~/xstest scienceqa=~/sqa \\
        --image-types SD,TYPO,SD_TYPO --model llava-hf/llava-1.5-7b-hf --device cuda --dtype bfloat16 \\
        --methods none,moras --calibration vlsafe-calib=~/VLSafe --out out/suite

Writes ``out/<suite>/`` (the ``moras`` runner's records, table and figures; resumable), ``out/setup/`` (the
prototype and calibration shared by every suite) and ``out/summary.{csv,json,md}`` (one row per suite ×
method: ASR, over-refusal, risk, latency, and the suite's official utility metric where it is mechanical).
MM-Vet answers are written as ``out/mm-vet/mmvet_answers_<method>.json`` for its GPT-4 grader.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from moras_interp import distributed
from moras_interp.cli.common import add_model_args, model_from_args
from moras_interp.cli.moras import add_method_args, method_names, methods_from_args


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, value = it.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{what}: expected NAME=PATH, got {it!r}.")
        out[name.strip()] = value
    return out


def _suite_of(name: str, root: str) -> str | None:
    """The registered suite a NAME=ROOT pair means: NAME itself, or ``jsonl`` / ``csv`` for LABEL=FILE."""
    from moras_interp.eval.suites import SUITES

    if name in SUITES:
        return name
    ext = Path(root).suffix.lower().lstrip(".")
    return ext if ext in ("jsonl", "csv") and name.replace("-", "").replace("_", "").isalnum() else None


def _load(args: argparse.Namespace) -> dict[str, tuple[str, str, list[Any]]]:
    """``{name: (root, suite, examples)}`` for every NAME=ROOT given (each file read and checked now)."""
    from moras_interp.eval.suites import SUITES, load_suite

    roots = _pairs(args.suites, "suite")
    images = _pairs(args.image_root or [], "--image-root")
    kinds = {n: _suite_of(n, r) for n, r in roots.items()}
    unknown = [n for n in [*roots, *images] if kinds.get(n) is None]
    if unknown:
        raise ValueError(f"Unknown suite(s) {unknown}; suites: {', '.join(SUITES)} (see --list), or "
                         "LABEL=FILE.jsonl / LABEL=FILE.csv for your own file.")
    stray = [n for n in images if n not in roots]
    if stray:
        raise ValueError(f"--image-root given for {stray} but no such suite is being run.")
    types = [t.strip() for t in args.image_types.split(",") if t.strip()] if args.image_types else None
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be ≥ 1, got {args.limit}.")
    data = {}
    for name, root in roots.items():
        if SUITES[kinds[name]].kind == "calibration":
            raise ValueError(f"{name} is a calibration set: pass it as --calibration {name}={root}.")
        exs = load_suite(kinds[name], root, image_root=images.get(name),
                         image_types=types if kinds[name].startswith("mm-safetybench") else None)
        data[name] = (root, kinds[name], exs[: args.limit] if args.limit is not None else exs)
    return data


def _official(name: str, examples: list[Any], records: Any, methods: list[str], folder: Path) -> dict[str, dict]:
    """Official utility metric(s) per method from the run's records (answers matched to examples by id)."""
    from moras_interp.atomic import atomic_write_text
    from moras_interp.eval.suites import score_suite
    from moras_interp.eval.utility import mmvet_submission

    out: dict[str, dict] = {}
    for m in methods:
        answers = dict(zip(records.loc[records["method"] == m, "id"], records.loc[records["method"] == m, "answer"]))
        ans = [answers[e.id] for e in examples]
        if name == "mm-vet":
            atomic_write_text(folder / f"mmvet_answers_{m}.json", json.dumps(mmvet_submission(examples, ans), indent=1))
        out[m] = score_suite(name, examples, ans) or {}
    return out


def _markdown(summary: Any) -> str:
    """The combined table (suite × method) in markdown: rates, risk, latency and official metrics."""
    cols = [c for c in ("suite", "method", "n", "asr", "over_refusal", "refusal_rate", "risk_auroc", "mean_latency_s")
            if c in summary.columns] + [c for c in summary.columns if c.startswith("official_")]

    def fmt(v: Any) -> str:
        return ("—" if v != v else f"{v:.3g}") if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(c.removeprefix("official_") for c in cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for _, r in summary.iterrows()]) + "\n"


def _run(args: argparse.Namespace) -> int:
    import pandas as pd

    from moras_interp.atomic import atomic_write_text
    from moras_interp.eval.suites import SUITES, load_suite, suite_table
    from moras_interp.moras.evaluate import evaluate

    if args.list:
        print(suite_table())
        return 0
    if not args.suites or args.out is None:
        raise ValueError("give one or more NAME=ROOT suites and --out (or --list)")
    names = method_names(args)
    data = _load(args)  # every file checked before the model loads
    calibration = None
    if args.calibration and args.calibration.split("=", 1)[0] in SUITES:
        (cname, croot), = _pairs([args.calibration], "--calibration").items()
        if SUITES[cname].kind != "calibration":
            raise ValueError(f"--calibration {cname}=...: not a calibration suite (vlsafe-calib).")
        calibration = load_suite(cname, croot)
    out = Path(args.out)
    model = model_from_args(args)
    methods, judge, info = methods_from_args(args, model, names, out / "setup", calibration=calibration)
    tables = []
    for name, (root, suite, examples) in data.items():
        run_info = info | {"data": f"{name}={root}", "format": "suite",
                           "suite": suite, "image_types": args.image_types, "limit": args.limit,
                           "calibration": args.calibration}
        res = evaluate(examples, methods, out / name, batch_size=args.batch_size, max_new_tokens=info["max_new_tokens"],
                       judge=judge, progress=not args.quiet, figures=not args.no_figures, run_info=run_info,
                       seed=args.seed, overwrite=args.overwrite)
        if not distributed.info().is_main:  # under torchrun: rank 0 writes the official scores and the summary
            continue
        table = res.summary.copy()
        official = _official(suite, examples, res.records, names, out / name)
        for m, scores in official.items():
            for k, v in scores.items():
                table.loc[table["method"] == m, f"official_{k}"] = v
        table.insert(0, "suite", name)
        table.insert(1, "kind", SUITES[suite].kind)
        tables.append(table)
    if not distributed.info().is_main:
        return 0
    summary = pd.concat(tables, ignore_index=True)
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(out / "summary.json", summary.to_json(orient="records", indent=1))
    md = _markdown(summary)
    atomic_write_text(out / "summary.md", md)
    print(md)
    print(f"wrote {out / 'summary.csv'} ({len(summary)} rows: {len(data)} suites × {len(names)} methods)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``suite`` sub-command."""
    p = sub.add_parser("suite", help="run methods over the paper's evaluation suites (FigStep, MM-SafetyBench, "
                       "XSTest, ScienceQA, GQA, MME, MM-Vet) into one table",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("suites", nargs="*", metavar="NAME=ROOT", help="a suite and the folder holding its files")
    p.add_argument("--list", action="store_true", help="list the suites and the files each needs, then exit")
    p.add_argument("--out", default=None, help="results folder (one subfolder per suite; re-running resumes)")
    p.add_argument("--image-root", action="append", metavar="NAME=DIR", help="images of suite NAME (repeatable)")
    p.add_argument("--image-types", default=None, help="MM-SafetyBench image types, e.g. SD,TYPO,SD_TYPO (default "
                   "SD_TYPO, the authors' run); 'text' = the original question without image")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each suite")
    add_method_args(p)
    for action in p._actions:
        if action.dest == "calibration":
            action.help = f"{action.help}, or vlsafe-calib=ROOT (the MoRAS authors' 50 + 50 VLSafe pairs)"
    p.set_defaults(fn=_run)
