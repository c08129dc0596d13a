"""Byte-level helpers of :mod:`moras_interp.activations.store`: dataset fingerprints, atomic writes, and the
validation of one shard's tensors before they are written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from moras_interp.atomic import atomic_write_bytes

TMP_PREFIX = ".tmp-"


class StoreWarning(UserWarning):
    """A shard on disk failed verification and will be recomputed."""


def dataset_fingerprint(items: Iterable[str | bytes]) -> str:
    """sha256 (hex) over already-serialised examples (e.g. prompt text, image bytes), order-sensitive.

    Each item is length-prefixed and type-tagged, so ["ab", "c"] and ["a", "bc"] differ.
    """
    h = hashlib.sha256()
    n = 0
    for item in items:
        if isinstance(item, str):
            data, tag = item.encode("utf-8"), b"s"
        elif isinstance(item, (bytes, bytearray, memoryview)):
            data, tag = bytes(item), b"b"
        else:
            raise TypeError(f"dataset_fingerprint takes str or bytes items, got {type(item).__name__} at item {n}.")
        h.update(tag + len(data).to_bytes(8, "little") + data)
        n += 1
    h.update(b"n" + n.to_bytes(8, "little"))
    return h.hexdigest()


def jsonable(x: Any, what: str) -> Any:
    """JSON round trip (tuples -> lists) so stored and requested values compare equal."""
    try:
        return json.loads(json.dumps(x))
    except TypeError as e:
        raise TypeError(f"{what} must be JSON-serialisable: {e}") from e


def atomic_write(path: Path, data: bytes) -> None:
    """Atomic write whose temp file carries ``TMP_PREFIX`` (stale ones are removed when a store opens)."""
    atomic_write_bytes(path, data, prefix=TMP_PREFIX + path.name + ".")
    with contextlib.suppress(OSError):           # make the rename itself durable (POSIX; best effort)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def prepare_shard_tensors(k: int, tensors: dict[str, torch.Tensor], hooks: list[str], dtype_name: str,
                          want: int | None) -> dict[str, torch.Tensor]:
    """Shard ``k``'s tensors, checked and cast: every tensor [want, ...] (``want`` None: the first tensor's
    length), hook tensors finite before and after the cast to the store dtype ``dtype_name``; CPU, contiguous.

    Raises ValueError naming the shard and the tensor on a length mismatch, NaN/Inf or dtype overflow.
    """
    dtype = getattr(torch, dtype_name)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        t = torch.as_tensor(t).detach().cpu()
        if want is None and t.ndim:
            want = int(t.shape[0])
        if t.ndim == 0 or t.shape[0] != want:
            raise ValueError(f"shard {k}: {name!r} has shape {tuple(t.shape)}; every tensor needs "
                             f"{want} examples along dim 0.")
        if name in hooks:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"activations contain NaN/Inf at hook {name!r} (shard {k}): "
                                 "check dtype overflow (use float32) or the input.")
            t = t.to(dtype)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"activations at hook {name!r} (shard {k}) overflow {dtype_name}: "
                                 "use a wider store dtype (float32).")
        out[name] = t.contiguous()
    return out
