"""The README's first lines are the two commands (install + demo, install + tests) and CI runs the test command.

The README's code blocks themselves are executed, with their shown output compared, by tests/test_docs.py.
"""

from __future__ import annotations

from moras_interp.notebooks import REPO


def test_readme_first_lines_are_the_two_commands_and_ci_runs_the_test_command() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    cmds = [l for l in lines[:8] if l.startswith("python3 -m venv")]
    assert len(cmds) == 2 and cmds[0].endswith("moras-interp demo --out out/demo")
    test_cmd = cmds[1].split("&& ")[-1]
    assert test_cmd == "python -m pytest -q tests"
    assert test_cmd in (REPO / ".ci" / "run").read_text(encoding="utf-8")
