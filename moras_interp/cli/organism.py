"""``moras-interp organism {train,card}``: retrain the shipped model organism or regenerate its model card."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    if args.action == "train":
        from moras_interp.organisms.train import main

        return main(args.rest)
    from moras_interp.organisms.card import main as card_main

    return int(card_main(args.rest) or 0)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``organism`` sub-command (arguments after the action are passed through)."""
    p = sub.add_parser("organism", help="retrain the toy-llava organism (train --out DIR) or rebuild its card",
                       add_help=True)
    p.add_argument("action", choices=["train", "card"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the action, e.g. --out DIR --steps 800")
    p.set_defaults(fn=_run)
