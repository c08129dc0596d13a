"""Atomic file writes: the one mechanism behind every result, store, trace and figure the package writes.

A file is written to a temporary file beside the target, flushed and fsynced, given the usual permissions,
then moved into place with ``os.replace``, so a run killed at any point leaves either the old or the new file
(never a torn one); the temporary file is removed on failure.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

PathLike = str | os.PathLike


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object], *, prefix: str | None = None) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, then atomically move it into place.

    ``prefix`` names the temp file (default ``.{name}.``), for callers that clean up stale ones by pattern.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0o22)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(path: PathLike, data: bytes, *, prefix: str | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data), prefix=prefix)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
