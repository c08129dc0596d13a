"""Reading what the package wrote (or a user hands it): JSON, JSONL, safetensors and NPZ, with errors that name
the file (and the line, for JSONL) and say what is wrong — the read side of :mod:`moras_interp.atomic`.

Every reader refuses pickles: a ``.safetensors``/``.npz``/``.json`` file that is really a pickle or a
``torch.save`` archive gets a clear :class:`ReadError` instead of a parser error (and is never unpickled;
NPZ is read with ``allow_pickle=False``). :func:`check_fields` validates the types of a parsed object's fields.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

PathLike = str | os.PathLike


class ReadError(ValueError):
    """A file could not be read as what it should be; the message names the file (and line) and the fix."""


def _head(path: Path, n: int = 512) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file).")
    with open(path, "rb") as fh:
        return fh.read(n)


def _pickle_kind(head: bytes, path: Path) -> str | None:
    """'a pickle' / 'a torch.save archive' when the bytes look like one, else None."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("data.pkl") for n in z.namelist()):
                    return "a torch.save (pickle) archive"
        except zipfile.BadZipFile:
            return None
    return None


def _refuse_pickle(path: Path, head: bytes, what: str) -> None:
    kind = _pickle_kind(head, path)
    if kind is not None:
        raise ReadError(f"{path} is {kind}, not {what}: pickles are never loaded (they can run code). "
                        "Re-create the file with this package (it writes safetensors / JSON only).")


def read_text(path: PathLike, what: str = "a UTF-8 text file") -> str:
    """The file's text (UTF-8); a binary or pickled file is a :class:`ReadError` naming it."""
    p = Path(path)
    head = _head(p)
    _refuse_pickle(p, head, what)
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReadError(f"{p} is not {what}: byte {e.start} is not UTF-8 (a binary or corrupt file?).") from e


def read_json(path: PathLike, *, expect: type | tuple[type, ...] | None = dict, what: str = "a JSON file",
              error: type[ReadError] = ReadError,
              fix: str = "Restore or delete the file (re-running writes it again).") -> Any:
    """Parse a JSON file; errors (raised as ``error``, e.g. the dataset loaders' ``DatasetFormatError``) name the
    file, line and column and end with ``fix``; ``expect`` checks the top-level type."""
    p = Path(path)
    text = read_text(p, what)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (the file is empty)" if not text.strip() else \
            " (truncated?)" if e.pos >= len(text.rstrip()) - 1 else ""
        raise error(f"{p}: not valid JSON{hint}: {e.msg} at line {e.lineno}, column {e.colno}. {fix}") from e
    if expect is not None and not isinstance(obj, expect):
        names = "/".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise error(f"{p}: expected a JSON {names} at the top level, got {type(obj).__name__}.")
    return obj


def read_jsonl(path: PathLike, *, drop_torn_tail: bool = False,
               error: type[ReadError] = ReadError) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-empty line of a JSONL file; each line must be a JSON object.

    ``drop_torn_tail``: ignore a last line without its newline (a run killed mid-append) instead of failing.
    Errors name ``file:line`` and are raised as ``error`` (a :class:`ReadError` subclass, e.g. the dataset
    loaders' ``DatasetFormatError``). Blank lines are skipped; the line numbers tell where they were.
    """
    p = Path(path)
    text = read_text(p, "a JSONL file")
    lines = text.split("\n")
    if drop_torn_tail and lines and lines[-1] != "":
        lines = lines[:-1]
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{p}:{i}: not valid JSON ({e.msg}, column {e.colno}). Fix or delete that line.") from e
        if not isinstance(obj, dict):
            raise error(f"{p}:{i}: expected a JSON object per line, got {type(obj).__name__}.")
        out.append((i, obj))
    return out


def _safe_open(p: Path) -> Any:
    from safetensors import safe_open

    head = _head(p, 512)
    _refuse_pickle(p, head, "a safetensors file")
    if len(head) < 8:
        raise ReadError(f"{p} is not a safetensors file: only {len(head)} bytes (truncated or empty).")
    try:
        return safe_open(str(p), framework="pt", device="cpu")
    except Exception as e:  # SafetensorError is not exported under a stable name
        raise ReadError(f"{p} is not a valid safetensors file ({e}): truncated or corrupt. Delete it and "
                        "re-create it (re-running the command that wrote it).") from e


def safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file's header ({} when none)."""
    p = Path(path)
    with _safe_open(p) as f:
        return dict(f.metadata() or {})


def read_safetensors(path: PathLike, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file on CPU: all, or only ``names`` (only those bytes are read).

    Errors name the file: pickles, truncated/corrupt files and missing tensors (listing the ones present).
    """
    p = Path(path)
    with _safe_open(p) as f:
        keys = list(f.keys())
        want = keys if names is None else list(names)
        missing = [n for n in want if n not in keys]
        if missing:
            raise ReadError(f"{p} holds no tensor(s) {missing}; it has {keys[:20]}"
                            + (f" and {len(keys) - 20} more" if len(keys) > 20 else "") + ".")
        try:
            return {n: f.get_tensor(n) for n in want}
        except Exception as e:
            raise ReadError(f"{p}: cannot read its tensors ({e}): the file is truncated or corrupt.") from e


def read_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file, never unpickled (``allow_pickle=False``); errors name the file."""
    p = Path(path)
    head = _head(p, 512)
    _refuse_pickle(p, head, "an NPZ file")
    if not head.startswith(b"PK"):
        raise ReadError(f"{p} is not an NPZ (zip) file: truncated, corrupt or another format.")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise ReadError(f"{p} holds object (pickled) arrays, which are never loaded; save plain numeric "
                            "arrays.") from e
        raise ReadError(f"{p}: cannot read it as NPZ ({e}).") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ReadError(f"{p}: cannot read it as NPZ ({e}): truncated or corrupt.") from e


def check_fields(obj: Mapping[str, Any], spec: Mapping[str, type | tuple[type, ...]], where: str, *,
                 optional: Iterable[str] = ()) -> None:
    """Raise :class:`ReadError` naming ``where`` (e.g. ``"run/records.jsonl:12"``) unless every field of
    ``spec`` is present (those in ``optional`` may be missing or None) with the given type(s).
    ``bool`` is not accepted where a number is asked for."""
    opt = set(optional)
    for key, types in spec.items():
        if key not in obj or obj[key] is None:
            if key in opt:
                continue
            raise ReadError(f"{where}: missing field {key!r}.")
        v = obj[key]
        tt = types if isinstance(types, tuple) else (types,)
        if (isinstance(v, bool) and bool not in tt) or not isinstance(v, tt):
            names = " or ".join(t.__name__ for t in tt)
            raise ReadError(f"{where}: field {key!r} must be {names}, got {type(v).__name__} {v!r:.60}.")


__all__ = ["ReadError", "check_fields", "read_json", "read_jsonl", "read_npz", "read_safetensors", "read_text",
           "safetensors_metadata"]
