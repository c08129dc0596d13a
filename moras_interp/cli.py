"""Command line: ``moras-interp {demo,hooks,attention,moras,organism} ...``."""

from __future__ import annotations

import argparse
import sys


def _hooks(args: argparse.Namespace) -> int:
    from moras_interp.models.loading import load_model

    if args.model.startswith("tiny:"):
        from moras_interp.models.tiny import build_tiny

        hf, proc = build_tiny(args.model.split(":", 1)[1])
        model = load_model(hf, processor=proc)
    else:
        model = load_model(args.model, device=args.device, dtype=args.dtype)
    print(model)
    print(model.hook_table())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moras-interp", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("hooks", help="load a model and print its canonical hook table")
    p.add_argument("--model", default="tiny:llava", help="HF id, local path, organism name or tiny:<arch>")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.set_defaults(fn=_hooks)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
