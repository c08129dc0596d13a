"""Packages import only downward: models → activations/viz/eval → attention → moras → organisms → ablations/cli.

Every ``import`` / ``from … import`` in every module is read from its syntax tree (module level, inside
functions and under ``TYPE_CHECKING`` alike, absolute and relative), so a lazy import inside a function
counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "moras_interp"

LAYER = {"_version": 0, "atomic": 0, "distributed": 0, "data": 0, "readers": 0, "progress": 0, "weights_hash": 1, "identity": 2, "fingerprints": 2, "callable_identity": 2, "models": 1, "activations": 2, "viz": 2, "eval": 2, "attention": 3, "moras": 4,
         "organisms": 5, "ablations": 6, "cli": 6, "notebooks": 7, "__init__": 7}
"""Layer of each top-level package/module of moras_interp (equal layers may import each other)."""

EXCEPTIONS: set[tuple[str, str]] = set()  # none: models/loading.py resolves names through models/registry.py


def _top(module: str) -> str | None:
    """``moras_interp.moras.pipeline`` -> ``moras``; None for other packages."""
    parts = module.split(".")
    if parts[0] != "moras_interp":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(rel: str, source: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, the module at ``rel`` inside moras_interp/."""
    parts = ["moras_interp", *rel.removesuffix(".py").split("/")]
    package = parts[:-1]  # the package a relative import starts from (also right for __init__.py)
    out = []
    for node in ast.walk(ast.parse(source, rel)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            if mod == "moras_interp":  # from moras_interp import organisms: the submodule is what is imported
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return sorted(out)


def _violations(rel: str, source: str) -> list[str]:
    here = rel.split("/")[0].removesuffix(".py")
    bad = []
    for line, mod in _imports(rel, source):
        there = _top(mod)
        if there is None or there == here or there not in LAYER:
            continue
        if LAYER[there] > LAYER[here] and (rel, there) not in EXCEPTIONS:
            bad.append(f"{rel}:{line} ({here}, layer {LAYER[here]}) imports {mod} ({there}, layer {LAYER[there]})")
    return bad


def test_every_package_is_in_the_layer_table() -> None:
    names = {p.name.removesuffix(".py") for p in PKG.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert names <= set(LAYER), names - set(LAYER)


def test_no_package_imports_upward() -> None:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        bad += _violations(path.relative_to(PKG).as_posix(), path.read_text(encoding="utf-8"))
    assert bad == []


def test_the_checker_sees_lazy_relative_and_type_checking_imports() -> None:
    """An upward import inside a function, a relative one and one under TYPE_CHECKING are all reported."""
    src = ("from typing import TYPE_CHECKING\nfrom ..organisms import tasks\n\ndef f():\n"
           "    from moras_interp.cli import main\n\nif TYPE_CHECKING:\n    import moras_interp.ablations.runner\n"
           "from . import prompts\nfrom moras_interp import organisms\nfrom moras_interp.models import MLLM\n")
    bad = _violations("moras/probe.py", src)
    assert [b.split(" ")[0] for b in bad] == ["moras/probe.py:2", "moras/probe.py:5", "moras/probe.py:8",
                                              "moras/probe.py:10"], bad
    assert "imports moras_interp.organisms " in bad[0] and "moras_interp.cli " in bad[1]
    assert _violations("ablations/probe.py", src) == []  # ablations may import organisms and moras
    assert _violations("models/loading.py", "from moras_interp.organisms import ORGANISMS\n") != []  # no exceptions
