"""A small registry of model names, so that the model layer never imports the packages that ship models.

Packages above ``models/`` register their names when imported (``moras_interp/__init__.py`` imports them, so
importing any ``moras_interp`` module fills the registry)::

    register_model("toy-llava", lambda **_: organism_path("toy-llava"))       # organisms/__init__.py
    register_model("tiny:llava", lambda attn_implementation="eager", **_: build_tiny("llava", ...))

A resolver is called with ``load_model``'s keyword ``attn_implementation`` (ignore what you do not need) and
returns either a local directory (``str`` / ``Path``, loaded with ``from_pretrained``) or an already-built
``(hf_model, processor)`` pair. :func:`load_model` looks names up here first, and uses :func:`suggest` to turn
a near-miss (``"toy-lava"``) into an immediate "did you mean" instead of a Hugging Face Hub request.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

Target = str | Path | tuple[Any, Any]
Resolver = Callable[..., Target]

_REGISTRY: dict[str, Resolver] = {}


def register_model(name: str, resolver: Resolver) -> None:
    """Register ``name`` (e.g. ``"toy-llava"``, ``"tiny:llava"``); re-registering a name replaces it."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"A model name must be a non-empty string without surrounding spaces, got {name!r}.")
    if not callable(resolver):
        raise TypeError(f"The resolver of {name!r} must be callable, got {type(resolver).__name__}.")
    _REGISTRY[name] = resolver


def names() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_REGISTRY)


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model name."""
    return name in _REGISTRY


def resolve(name: str, **options: Any) -> Target:
    """The target of a registered ``name``: a local directory or an ``(hf_model, processor)`` pair.

    Raises ``KeyError`` naming the known names (and the closest ones) when ``name`` is not registered.
    """
    if name not in _REGISTRY:
        close = suggest(name)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"Unknown model name {name!r}.{hint} Registered names: {', '.join(names())}.")
    return _REGISTRY[name](**options)


def suggest(name: str, n: int = 3, cutoff: float = 0.75) -> list[str]:
    """Registered names close to ``name`` (case-insensitive ``difflib`` ratio ≥ ``cutoff``), best first."""
    lowered = {k.lower(): k for k in _REGISTRY}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=cutoff)]


__all__ = ["Resolver", "Target", "is_registered", "names", "register_model", "resolve", "suggest"]
