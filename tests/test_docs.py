"""Every code block of README.md and docs/*.md runs on CPU and prints what the page shows, or says why not.

The blocks are collected and run by Sybil (a maintained documentation-testing tool), in page order, sharing one
namespace per page, in a fresh working folder:

* a ```` ```python ```` block written with ``>>>`` prompts is a doctest: Sybil compares what each statement
  prints with the output shown under it (``...`` matches anything, whitespace runs are equal);
* a ```` ```python ```` block without prompts is executed (it must not raise);
* a ```` ```console ```` block holds ``$ moras-interp ...`` lines, each followed by the output it prints; the
  command runs in-process through :func:`moras_interp.cli.main` and its stdout is compared the same way (the
  only part Sybil does not ship: a shell evaluator, ~20 lines below);
* a block that cannot run here (a 7B checkpoint, a GPU, NDIF, your own data files, installing packages) is
  preceded by ``<!-- skip: next "reason" -->`` (Sybil's skip directive) and starts with a ``#`` comment that
  tells the reader why it is not run; ```` ```bash ```` blocks are always of this kind;
* ```` ```text ```` blocks are output or prose and are not run.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import itertools
import re
import shlex
from pathlib import Path
from unittest import SkipTest

import pytest
from sybil import Sybil
from sybil.example import Example
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

from moras_interp.notebooks import REPO

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_LANGUAGES = {"python", "console"}
NOT_CODE = {"text"}


def run_console(example: Example) -> str | None:
    """Run each ``$ moras-interp ...`` line of a console block; return a diff when its stdout differs."""
    from moras_interp.cli import main

    lines = example.parsed.splitlines()
    starts = [i for i, l in enumerate(lines) if l.startswith("$ ")] + [len(lines)]
    if starts[0] != 0:
        return "a console block starts with a `$ ` command line"
    for a, b in itertools.pairwise(starts):
        argv = shlex.split(lines[a][2:])
        if argv[0] != "moras-interp":
            return f"console blocks run moras-interp commands only, not {argv[0]!r}"
        want = "\n".join(lines[a + 1 : b]) + "\n"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(argv[1:])
        if rc:
            return f"`{lines[a][2:]}` exited with status {rc}"
        checker = doctest.OutputChecker()
        if not checker.check_output(want, out.getvalue(), FLAGS):
            ex = doctest.Example(lines[a], want)
            return checker.output_difference(ex, out.getvalue(), FLAGS)
    return None


def refuse_shell(example: Example) -> str:
    return ("a ```bash block is never run by the docs test: precede it with <!-- skip: next \"reason\" --> and "
            "say why in its first line, or write it as a ```console block with its output")


SYBIL = Sybil(parsers=[PythonCodeBlockParser(doctest_optionflags=FLAGS), SkipParser(),
                       CodeBlockParser("console", run_console), CodeBlockParser("bash", refuse_shell)])


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_examples_run_and_print_what_is_shown(page: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples write scene.png, heatmaps, traces here
    document = SYBIL.parse(page)
    for example in document:
        try:
            example.evaluate()
        except SkipTest as e:
            first = str(example.parsed).lstrip().splitlines()[0] if isinstance(example.parsed, str) else ""
            assert str(e).strip() and first.startswith("#"), (
                f"{page.name}:{example.line}: a skipped block needs a reason in its skip directive and a first "
                f"line `# ...` telling the reader why it is not run (got {first!r})")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_code_block_is_run_or_skipped_with_a_reason(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    fences = re.findall(r"^```(\S*)", text, re.M)[::2]  # opening fences (each block opens and closes)
    unknown = sorted({f for f in fences if f not in RUN_LANGUAGES | NOT_CODE | {"bash"}})
    assert not unknown, f"{page.name}: code blocks in {unknown}: use python, console, bash (skipped) or text"
    for reason in re.findall(r"<!--\s*skip:\s*next(.*?)-->", text):
        assert re.fullmatch(r'\s*"[^"]{8,}"\s*', reason), f"{page.name}: skip without a quoted reason: {reason!r}"


def test_readme_and_quickstart_really_run() -> None:
    """The pages a new user starts with are executed, not skipped."""
    for name, max_skips in (("README.md", 3), ("docs/quickstart.md", 0)):
        examples = list(SYBIL.parse(REPO / name))
        skips = [e for e in examples if e.region.evaluator.__class__.__name__ == "Skipper"]
        assert len(examples) - len(skips) >= 10, f"{name} has only {len(examples) - len(skips)} executed examples"
        assert len(skips) <= max_skips, f"{name} skips {len(skips)} blocks"


@pytest.mark.parametrize("page, message", [
    ("```python\n>>> print(1 + 1)\n3\n```\n", "Expected"),
    ("```console\n$ moras-interp organism scene --objects knife --out s.png\nwrote s.png (48×48)\nknife    hazard  box 1 2 3 4\n```\n",
     "Expected"),
    ("```bash\necho hi\n```\n", "never run"),
])
def test_a_drifted_output_or_an_unmarked_shell_block_fails(page: str, message: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "page.md").write_text(page, encoding="utf-8")
    with pytest.raises(Exception, match=message):
        for example in SYBIL.parse(tmp_path / "page.md"):
            example.evaluate()
