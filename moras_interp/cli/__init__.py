"""Command line: ``moras-interp [--debug] <command> ...``.

Each sub-command lives in its own module in this package and exposes ``register(subparsers)``, which adds
its parser and sets ``fn`` (a callable taking the parsed namespace and returning an exit code). To add a
command, add a module and list it in ``COMMANDS``.

Errors. A *user error* prints one line ``moras-interp <command>: error: <message>`` to stderr and exits with
status 2 (as argparse does for a bad option); ``--debug`` (before or after the command) shows the traceback
instead. User errors are (:func:`is_user_error`):

* argparse errors (unknown option, bad choice, missing argument);
* ``ValueError`` and ``KeyError`` (and their subclasses, e.g. a dataset-format error) raised by moras_interp's
  own code: these are the checks of input, options and files, and their messages name the fix;
* file-system errors anywhere (``FileNotFoundError``, ``FileExistsError``, ``PermissionError``,
  ``IsADirectoryError``, ``NotADirectoryError``; they name the path);
* any exception whose class is defined in moras_interp (e.g.
  :class:`~moras_interp.models.loading.ModelNotFoundError`, a dataset-format error, a locked or mismatched
  output folder): define such a class for a new kind of user error.

Output. Progress bars are on for every step that takes more than a couple of seconds and off with ``--quiet``;
transformers' own loading bars and log lines are off while a command runs
(:func:`moras_interp.progress.quiet_third_party`).

Anything else (a ``ValueError`` raised inside torch or transformers, a ``RuntimeError``, an
``AssertionError``) is an internal error and keeps its full traceback, so that it can be reported.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import NoReturn

COMMANDS: tuple[str, ...] = (
    "demo",
    "hooks",
    "attention",
    "moras",
    "suite",
    "organism",
)

USER_OS_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, PermissionError,
                                                   IsADirectoryError, NotADirectoryError)
"""File-system errors that are always the user's to fix (they name the path)."""

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line (``prog: error: message``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full ``moras-interp`` argument parser with every registered sub-command."""
    parser = _Parser(prog="moras-interp", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"moras_interp.cli.{name}")
        except ModuleNotFoundError as e:  # a command module not written yet must not break the others
            if e.name == f"moras_interp.cli.{name}":
                continue
            raise
        mod.register(sub)
    for name, p in sub.choices.items():  # --debug is also accepted after the command
        if "--debug" not in p._option_string_actions:
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        _standalone_help(p, sys.modules[f"moras_interp.cli.{name}"].__doc__)
    return parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (examples keep their layout) and every option's default shown, unless its help
    already names it, it has none (``None``) or it is an on/off flag."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default in (None, argparse.SUPPRESS) or action.nargs == 0
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)".strip()


def _standalone_help(p: argparse.ArgumentParser, doc: str | None) -> None:
    """Every (sub-)command's ``--help`` has a description (its module docstring unless it set one) and shows
    the defaults; nested sub-commands (``organism train``) get the same."""
    p.formatter_class = HelpFormatter
    if not p.description and doc:
        p.description = doc.strip()
    for action in p._actions:  # an option without help still shows its default
        if action.help is None and action.option_strings and action.nargs != 0 and action.default is not None:
            action.help = ""
            action.help = HelpFormatter("")._get_help_string(action)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                _standalone_help(child, child.description or helps.get(name) or doc)


def _raised_by_us(e: BaseException) -> bool:
    """Whether the innermost frame of ``e``'s traceback is moras_interp code."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is a user error (one line, exit 2) rather than an internal one (see the module docstring)."""
    from moras_interp.models.loading import ModelNotFoundError

    if isinstance(e, (*USER_OS_ERRORS, ModelNotFoundError)):
        return True
    if any(c.__module__.startswith("moras_interp.") for c in type(e).__mro__):  # our own exception classes
        return True
    return isinstance(e, (ValueError, KeyError)) and _raised_by_us(e)


def error_line(e: BaseException) -> str:
    """The message of ``e`` on one line (a ``KeyError``'s message without its quotes)."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    parts = [p.strip() for p in msg.splitlines() if p.strip()]
    line = ""
    for p in parts:
        line += p if not line else ((" " if line[-1] in ".:;,!?" else "; ") + p)
    return line or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``moras-interp`` console script."""
    from moras_interp.progress import quiet_third_party

    args = build_parser().parse_args(argv)
    try:
        with quiet_third_party():  # no "Loading weights" bars or transformers log lines; our bars stay (--quiet)
            return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"moras-interp {args.cmd}: interrupted (a rerun with the same options resumes where supported)",
              file=sys.stderr)
        return 130
    except Exception as e:
        if getattr(args, "debug", False) or not is_user_error(e):
            raise
        print(f"moras-interp {args.cmd}: error: {error_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["COMMANDS", "build_parser", "error_line", "is_user_error", "main"]
