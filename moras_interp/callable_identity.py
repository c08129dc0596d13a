"""What a user-supplied callable or object computes with: the run-identity part of evaluators, judges and
methods that carry no ``identity`` / ``config_dict`` of their own.

Two closures of one factory, two :func:`functools.partial` objects or two instances of one class differ only
in the values they hold, so their identity is the code (module, qualified name, a sha256 of the source) plus
those values: closure cells and default arguments, partial arguments, an object's public attributes.
Values are recorded by content where that is cheap (numbers, strings, tuples, tensors, models by
fingerprint, objects with an ``identity``, functions by name and source); anything else, mutable containers
included (they are state such as a call log or a flag, not settings), only by its type. Give such an object
an ``identity`` attribute, or pass settings as numbers, strings or tuples. No memory address is recorded,
so another process computes the same identity.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from typing import Any

import numpy as np
import torch

from moras_interp.identity import model_fingerprint, tensors_fingerprint


def callable_identity(fn: Any) -> dict[str, Any]:
    """JSON-able identity of a function, closure, partial, bound method or callable object (see module doc)."""
    ident = getattr(fn, "identity", None)
    if ident is not None:
        return json.loads(json.dumps(ident, default=str))
    if isinstance(fn, functools.partial):
        return {"partial": callable_identity(fn.func), "args": [value_identity(a) for a in fn.args],
                "keywords": {k: value_identity(v) for k, v in sorted(fn.keywords.items())}}
    out = code_identity(fn)
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
    if code is not None and cells:
        out["closure"] = {n: value_identity(_cell(c)) for n, c in zip(code.co_freevars, cells)}
    if code is not None:
        used = _referenced_globals(fn)
        if used:
            out["globals"] = used
    if getattr(fn, "__defaults__", None) or getattr(fn, "__kwdefaults__", None):
        out["defaults"] = [value_identity(v) for v in fn.__defaults__ or ()]
        out["kwdefaults"] = {k: value_identity(v) for k, v in sorted((fn.__kwdefaults__ or {}).items())}
    if inspect.ismethod(fn):
        out["self"] = attributes_identity(fn.__self__)
    elif code is None and hasattr(fn, "__dict__"):  # a callable object: its attributes
        out["attributes"] = attributes_identity(fn)
    return out


def code_identity(fn: Any) -> dict[str, Any]:
    """Module, qualified name and source sha256 of a function (of the class, for an object)."""
    target = fn if hasattr(fn, "__code__") or isinstance(fn, type) else type(fn)
    try:
        src = hashlib.sha256(inspect.getsource(target).encode()).hexdigest()
    except (OSError, TypeError):
        src = None
    return {"function": f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}",
            "source_sha256": src}


def attributes_identity(obj: Any) -> dict[str, Any]:
    """``{name: value_identity(value)}`` over an object's public attributes."""
    return {k: value_identity(v) for k, v in sorted(getattr(obj, "__dict__", {}).items()) if not k.startswith("_")}


def value_identity(v: Any) -> Any:
    """A JSON-able stand-in for a held value: by content where cheap, else its type (see module doc)."""
    if getattr(v, "identity", None) is not None and not callable(v.identity):
        return json.loads(json.dumps(v.identity, default=str))
    if hasattr(v, "hf") and hasattr(v, "processor"):  # an MLLM
        return {"model": model_fingerprint(v)}
    if isinstance(v, torch.Tensor):
        return {"tensor": tensors_fingerprint({"t": v.reshape(-1) if v.dim() == 0 else v})}
    if isinstance(v, np.ndarray):
        return {"array": hashlib.sha256(f"{v.dtype}:{v.shape}:".encode() + np.ascontiguousarray(v).tobytes()).hexdigest()}
    if isinstance(v, functools.partial):
        return callable_identity(v)
    if callable(v):  # a helper function or class: its name and source (not what it captures)
        return code_identity(v)
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, (tuple, frozenset)):
        return [value_identity(x) for x in (sorted(v, key=repr) if isinstance(v, frozenset) else v)]
    return {"type": f"{type(v).__module__}.{type(v).__qualname__}"}


_SIMPLE = (type(None), str, int, float, bool, tuple, frozenset, torch.Tensor, np.ndarray)


def _referenced_globals(fn: Any) -> dict[str, Any]:
    """Module-level names the function's code reads that are settings (numbers, strings, tuples, arrays,
    tensors) or functions / classes of the same module: changing ``SCALE = 10`` or redefining a helper changes
    what the function computes, so it changes its identity. Imported modules and library objects are left out."""
    g, module = getattr(fn, "__globals__", {}), getattr(fn, "__module__", None)
    out = {}
    for name in sorted(set(_names(fn.__code__))):
        if name not in g:
            continue
        v = g[name]
        if isinstance(v, _SIMPLE) or ((inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == module
                                      and v is not fn):
            out[name] = value_identity(v)
    return out


def _names(code: Any) -> list[str]:
    """Global names read by ``code`` and by the code objects nested in it (comprehensions, inner functions)."""
    names = list(code.co_names)
    for c in code.co_consts:
        if inspect.iscode(c):
            names += _names(c)
    return names


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a name not yet bound)
        return None


__all__ = ["attributes_identity", "callable_identity", "code_identity", "value_identity"]
