"""``moras-interp demo --out DIR``: the main job on the shipped organism (toy-llava)."""

from __future__ import annotations

import argparse
from pathlib import Path

from moras_interp.cli.common import add_model_args, model_from_args


def _run(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = model.hook_table()
    (out / "hooks.md").write_text(table)
    print(model)
    print(table)
    print(f"wrote {out / 'hooks.md'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = sub.add_parser("demo", help="run the main demo on the shipped organism and write its outputs")
    add_model_args(p)
    p.add_argument("--out", default="out/demo", help="output folder")
    p.set_defaults(fn=_run)
