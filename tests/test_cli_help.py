"""CLI help stands alone: every (sub-)command's ``--help`` has a description and shows each option's default."""

from __future__ import annotations

import argparse

import pytest

from moras_interp.cli import HelpFormatter, build_parser


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out[f"{prefix}{name}"] = child
                out |= _commands(child, f"{prefix}{name} ")
    return out


COMMANDS = _commands(build_parser())


def test_every_command_is_listed() -> None:
    assert {"demo", "hooks", "attention", "moras", "suite", "organism"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_has_a_description_and_shows_defaults(name: str) -> None:
    p = COMMANDS[name]
    text = p.format_help()
    assert p.description and p.description.strip() and p.description.strip()[:30] in text
    for a in p._actions:
        if not a.option_strings or a.help == argparse.SUPPRESS or a.nargs == 0 or a.default in (None, argparse.SUPPRESS):
            continue
        shown = HelpFormatter(p.prog)._get_help_string(a) % {"default": a.default}
        assert str(a.default) in shown, (name, a.dest, shown)
        assert shown.split("(default")[0].strip() in " ".join(text.split()), (name, a.dest)


def test_defaults_are_not_repeated_when_the_help_names_them() -> None:
    p = COMMANDS["moras"]
    text = " ".join(p.format_help().split())
    assert "(default: the CPU) (default" not in text and text.count("(default: toy-llava)") == 1
