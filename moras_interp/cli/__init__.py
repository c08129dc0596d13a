"""Command line: ``moras-interp <command> ...``.

Each sub-command lives in its own module in this package and exposes ``register(subparsers)``, which adds
its parser and sets ``fn`` (a callable taking the parsed namespace and returning an exit code). To add a
command, add a module and list it in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: tuple[str, ...] = ("demo", "hooks", "attention", "moras", "suite", "organism")


def build_parser() -> argparse.ArgumentParser:
    """The full ``moras-interp`` argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="moras-interp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"moras_interp.cli.{name}")
        except ModuleNotFoundError as e:  # a command module not written yet must not break the others
            if e.name == f"moras_interp.cli.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``moras-interp`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
