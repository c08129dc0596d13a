"""Atomic file writes: the one mechanism behind every result, store, trace and figure the package writes.

A file is written to a temporary file beside the target, flushed and fsynced, given the usual permissions,
then moved into place with ``os.replace``, so a run killed at any point leaves either the old or the new file
(never a torn one); the temporary file is removed on failure. The one in-place write is
:func:`atomic_append_bytes` (a single ``write`` + ``fsync`` to an append-only log), and :func:`folder_lock`
gives each output folder a single writer. Readers live in :mod:`moras_interp.readers`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
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


def atomic_append_bytes(path: PathLike, data: bytes) -> Path:
    """Append ``data`` to ``path`` with ONE ``write`` followed by ``fsync`` (the package's only in-place write).

    Used for append-only logs (``records.jsonl``): a run killed mid-call leaves at most a torn last line,
    which the reader drops (:meth:`moras_interp.moras.evaluate.RecordStore.load`). Concurrent writers are
    excluded by :func:`folder_lock`, not here.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if data:
        with open(target, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return target


class FolderLockedError(RuntimeError):
    """Another process is writing to the same output folder (the message names the folder and its PID)."""


LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder: PathLike) -> Iterator[Path]:
    """Hold an exclusive, non-blocking ``fcntl.flock`` on ``folder/.lock`` for the duration of the block.

    One writer per output folder: a second process (or a second lock in the same process) gets a
    :class:`FolderLockedError` naming the folder and the holder's PID at once, instead of both runs
    appending the same records. The lock dies with its process (a killed run never leaves a stale lock);
    the ``.lock`` file itself stays, holding the last holder's PID. Re-entrant within one thread of one
    process for the same folder (nested ``folder_lock`` calls share the outer lock). A read-only folder is
    not locked (nothing can be written to it; a reader may still summarise it).
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    key = (str(root.resolve()), threading.get_ident())  # another thread is another writer (its own flock)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield root / LOCK_NAME
        finally:
            _HELD[key] -= 1
        return
    path = root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (PermissionError, OSError) as e:
        if os.access(root, os.W_OK) or isinstance(e, FileNotFoundError):
            raise
        yield path  # a read-only folder: nothing can write to it, so readers need no lock
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise FolderLockedError(
                f"{root} is being written by another run (PID {holder}, lock file {path}): wait for it to "
                "finish, or use another output folder. Two writers on one folder would mix their results.") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = 1
        try:
            yield path
        finally:
            del _HELD[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_HELD: dict[tuple[str, int], int] = {}
"""Folders each thread of this process holds a lock on ((resolved path, thread id) → nesting depth)."""
