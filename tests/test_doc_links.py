"""Docs cite only files that exist: every relative Markdown link (and image) in README.md, the model cards and docs/*.md
resolves to a file or folder of the repository (anchors are checked against the target's headings)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "MODEL_CARD.md", ROOT / "MODEL_CARD_toy-llava-2.md",
        *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(md: Path) -> set[str]:
    """GitHub-style heading anchors of a Markdown file."""
    out = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def _links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)  # code blocks are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md: Path) -> None:
    broken = []
    for target in _links(md):
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{md.relative_to(ROOT)}: broken links: {broken}"


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text("# Title\n[ok](x.md#title) [bad](missing.md) [web](https://example.org)\n```\n[no](code.md)\n```\n")
    assert _links(md) == ["x.md#title", "missing.md"]
    assert "title" in _anchors(md)


def test_docs_do_not_cite_files_outside_the_repository() -> None:
    for md in DOCS:
        assert "DESIGN.md" not in md.read_text(encoding="utf-8"), f"{md.name} cites DESIGN.md (not in the repo)"
