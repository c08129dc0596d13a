"""The README's Python example runs as written on the shipped organism, and its commands stay true."""

from __future__ import annotations

import re

from moras_interp.notebooks import REPO


def test_readme_python_example_runs() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # our own documentation
    trace = scope["traces"][0]
    assert trace.risk > 0.9 and "sorry" in trace.answer  # the hazard scene is refused under MoRAS


def test_readme_first_lines_are_the_two_commands_and_ci_runs_the_test_command() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    cmds = [l for l in lines[:6] if l.startswith("python3 -m venv")]
    assert len(cmds) == 2 and cmds[0].endswith("moras-interp demo --out out/demo")
    test_cmd = cmds[1].split("&& ")[-1]
    assert test_cmd in (REPO / ".ci" / "run").read_text(encoding="utf-8")
