"""The package version has one home (moras_interp/_version.py); pyproject.toml and the docs must agree."""

import re
from pathlib import Path

import moras_interp

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_version_matches_package():
    m = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)   # [project] table
    assert m is not None and m[1] == moras_interp.__version__


def test_docs_name_no_version_newer_than_the_package():
    """docs/hooks.md announces renames "in 0.N": the package must be at least that version."""
    have = tuple(int(x) for x in moras_interp.__version__.split(".")[:2])
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in re.finditer(r"[Rr]enamed in (\d+)\.(\d+)", page.read_text()):
            assert (int(m[1]), int(m[2])) <= have, f"{page.name} says {m[0]!r} but the package is {have}"
