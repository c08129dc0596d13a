"""``moras-interp hooks``: load a model and print its canonical hook table."""

from __future__ import annotations

import argparse

from moras_interp.cli.common import add_model_args, model_from_args


def _run(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    print(model)
    print(model.hook_table())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``hooks`` sub-command."""
    p = sub.add_parser("hooks", help="load a model and print its canonical hook table")
    add_model_args(p)
    p.set_defaults(fn=_run)
