"""An on-disk activation store for long, resumable collection runs.

    store = ActivationStore.open_or_create("runs/l20", {"model_id": "llava-hf/llava-1.5-7b-hf", "hooks": [hook],
        "positions": "last", "dataset_fingerprint": dataset_fingerprint(serialised_examples), "dtype": "float32",
        "shard_size": 64, "n_examples": 1000})
    for k in store.missing_shards():                      # examples store.shard_range(k) = (start, stop)
        store.write_shard(k, {hook: acts, "labels": labels})                    # acts [stop - start, d]
    x = store.load(hook)                                                        # [n, d]

On disk: ``root/manifest.json`` (identity fields, dtype, shard size, n_examples, label names, completed
shards with their sha256, and a ``checksum`` of the manifest itself, so a hand-edited manifest is refused) and ``root/shard_{k:05d}.safetensors`` holding ``{hook_name: [n_in_shard, ...]}`` plus
optional ``labels`` / ``index`` tensors. Every write goes to a temporary file in the same directory, is
fsynced and moved into place with ``os.replace``; the manifest is rewritten the same way after each shard,
so a killed run leaves only complete shards behind. ``root=None`` keeps everything in memory. Opening a
store checks every shard's header against the manifest (tensor names, dtype, number of examples);
:meth:`ActivationStore.load` reads only the requested tensor of each shard (``safetensors.safe_open``).
Writers hold :func:`moras_interp.atomic.folder_lock` on ``root``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from moras_interp.activations.manifest import (
    FORMAT,
    IDENTITY_FIELDS,
    check_format,
    check_shard_header,
    identity_diffs,
)
from moras_interp.activations.manifest import manifest_checksum as _checksum
from moras_interp.activations.shard_io import (
    TMP_PREFIX,
    StoreWarning,
    atomic_write,
    dataset_fingerprint,
    jsonable,
    prepare_shard_tensors,
)
from moras_interp.readers import ReadError, read_json, read_safetensors

EXTRA_TENSORS = ("labels", "index")
MANIFEST = "manifest.json"
__all__ = ["EXTRA_TENSORS", "MANIFEST", "ActivationStore", "StoreWarning", "dataset_fingerprint"]


class ActivationStore:
    """Shards of activations {hook: [n_in_shard, ...]} under ``root`` (or in memory when root is None).

    ``manifest`` must give the identity fields ``IDENTITY_FIELDS`` (model_id, hooks, positions,
    dataset_fingerprint, dtype, shard_size); ``n_examples`` and ``arch`` are recommended, an optional
    ``identity`` dict is compared like them, any other JSON-able keys are kept. Opening a root whose
    manifest has different identity fields raises; shards whose sha256 no longer matches are dropped
    (with a ``StoreWarning``) and must be recomputed.
    """

    def __init__(self, root: str | os.PathLike | None, manifest: dict[str, Any], *, owner: bool = True) -> None:
        """``owner=False``: a rank of a multi-process collection that is not rank 0 (which owns the manifest):
        the manifest is only read (identity-checked, not re-verified) and :meth:`write_shard` writes the shard
        file but not the manifest (rank 0 adopts the shard with :meth:`adopt_shard`)."""
        self.root = None if root is None else Path(root)
        self.manifest = self._normalise(manifest)
        self._memory: dict[int, bytes] = {}
        self._owner = owner
        self.dropped: dict[int, str] = {}     # shard -> why verification dropped it when the store was opened
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(TMP_PREFIX + "*") if owner else ():   # left by a run killed mid-write
            stale.unlink(missing_ok=True)
        path = self.root / MANIFEST
        if path.exists():
            old = self._read_manifest(path)
            diffs = identity_diffs(old, self.manifest)
            if diffs:
                raise ValueError(f"{self.root} holds activations from a different run:\n" + "\n".join(diffs)
                                 + "\nUse another directory, or delete this one to start over.")
            self.manifest["shards"] = old.get("shards", {})
            if owner:
                self._verify()
        if owner:
            self._write_manifest()

    @classmethod
    def open_or_create(cls, root: str | os.PathLike | None, manifest: dict[str, Any]) -> ActivationStore:
        """Resume the store at ``root`` if its identity matches ``manifest``, else create it."""
        return cls(root, manifest)

    @classmethod
    def open(cls, root: str | os.PathLike) -> ActivationStore:
        """Open an existing store for reading, with the identity it was created with."""
        path = Path(root) / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"no activation store at {root}: {path} does not exist.")
        return cls(root, cls._read_manifest(path))

    # ---- manifest ---------------------------------------------------------------------------------
    @staticmethod
    def _normalise(manifest: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in IDENTITY_FIELDS if k not in manifest]
        if missing:
            raise ValueError(f"manifest is missing required fields {missing} (needs {list(IDENTITY_FIELDS)}).")
        m = {k: v for k, v in manifest.items() if k not in ("shards", "format")}
        dtype = str(m["dtype"]).removeprefix("torch.")
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {m['dtype']!r} in manifest.")
        m = jsonable(m | {"dtype": dtype, "hooks": [str(h) for h in m["hooks"]]}, "manifest")
        if not m["hooks"] or len(set(m["hooks"])) != len(m["hooks"]) or set(m["hooks"]) & set(EXTRA_TENSORS):
            raise ValueError(f"hooks must be distinct, non-empty and not {EXTRA_TENSORS}, got {m['hooks']}.")
        if not isinstance(m["shard_size"], int) or m["shard_size"] < 1:
            raise ValueError(f"shard_size must be a positive int, got {m['shard_size']!r}.")
        if m.get("n_examples") is not None and (not isinstance(m["n_examples"], int) or m["n_examples"] < 0):
            raise ValueError(f"n_examples must be a non-negative int, got {m['n_examples']!r}.")
        return {"format": FORMAT, **m, "shards": {}}

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        try:
            old = read_json(path, what="an activation-store manifest")
        except ReadError as e:
            raise ValueError(f"corrupt activation-store manifest {e} Delete the directory to start over.") from e
        missing = [k for k in (*IDENTITY_FIELDS, "shards") if k not in old]
        if missing or not isinstance(old["shards"], dict):
            raise ValueError(f"corrupt activation-store manifest {path}: missing or invalid keys "
                             f"{missing or ['shards']}. Delete the directory to start over.")
        stored = old.pop("checksum", None)
        if stored is None:
            warnings.warn(f"{path} has no checksum (written by an older version): its fields cannot be verified.",
                          StoreWarning, stacklevel=3)
        elif stored != _checksum(old):
            raise ValueError(f"{path} was edited by hand (its content no longer matches its checksum): fields such "
                             "as n_examples, dtype or label_names would be misread. Restore it, or delete the "
                             "directory and collect again.")
        check_format(old, path)
        return old

    def _write_manifest(self) -> None:
        if self.root is not None:
            m = self.manifest | {"checksum": _checksum(self.manifest)}
            atomic_write(self.root / MANIFEST, (json.dumps(m, indent=1, sort_keys=True) + "\n").encode())

    def _verify(self) -> None:
        """Drop shards whose file is missing or whose sha256 differs from the manifest; refuse shards whose
        header disagrees with the manifest (index, tensor names, dtype, number of examples)."""
        for key, info in list(self.manifest["shards"].items()):
            path = self._shard_path(int(key)) if str(key).isdigit() else None
            if path is None or not isinstance(info, dict):
                raise ValueError(f"{self.root / MANIFEST}: invalid shard entry {key!r}: {info!r}.")
            if not path.exists():
                problem = "is missing"
            elif hashlib.sha256(path.read_bytes()).hexdigest() != info.get("sha256"):
                problem = "does not match its sha256 in the manifest (corrupt or modified)"
            else:
                check_shard_header(self, int(key), path)
                continue
            warnings.warn(f"{path} {problem}: shard {key} will be recomputed.", StoreWarning, stacklevel=4)
            self.dropped[int(key)] = f"{path.name} {problem}"
            del self.manifest["shards"][key]

    # ---- shards -----------------------------------------------------------------------------------
    hooks = property(lambda self: list(self.manifest["hooks"]), doc="Hook names stored.")
    shard_size = property(lambda self: int(self.manifest["shard_size"]), doc="Examples per shard.")

    @property
    def n_shards(self) -> int | None:
        """Number of shards the full dataset needs (None when n_examples is unknown)."""
        n = self.manifest.get("n_examples")
        return None if n is None else -(-n // self.shard_size)

    def shard_range(self, k: int) -> tuple[int, int]:
        """(start, stop) example indices covered by shard k."""
        start = k * self.shard_size
        n = self.manifest.get("n_examples")
        return start, (start + self.shard_size if n is None else min(start + self.shard_size, n))

    def _shard_path(self, k: int) -> Path:
        assert self.root is not None
        return self.root / f"shard_{k:05d}.safetensors"

    def has_shard(self, k: int) -> bool:
        return str(k) in self.manifest["shards"]

    def completed_shards(self) -> list[int]:
        return sorted(int(k) for k in self.manifest["shards"])

    def missing_shards(self) -> list[int]:
        """Shards still to compute, in order (needs n_examples)."""
        if self.n_shards is None:
            raise ValueError("missing_shards() needs n_examples in the manifest.")
        return [k for k in range(self.n_shards) if not self.has_shard(k)]

    def is_complete(self) -> bool:
        return self.n_shards is not None and not self.missing_shards()

    def write_shard(self, k: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> str:
        """Store shard k: {hook: [n_in_shard, ...]} for every hook, plus optional labels/index [n_in_shard].

        Hook tensors are cast to the store dtype; ``meta`` (JSON-able) goes in the shard header and the
        manifest. Returns the shard's sha256. Raises ValueError on non-finite values (naming the hook),
        missing/unknown keys or inconsistent lengths.
        """
        if not isinstance(k, int) or k < 0 or (self.n_shards is not None and k >= self.n_shards):
            raise ValueError(f"shard index {k!r} out of range [0, {self.n_shards}).")
        unknown = sorted(set(tensors) - set(self.hooks) - set(EXTRA_TENSORS))
        missing = [h for h in self.hooks if h not in tensors]
        if unknown or missing:
            raise ValueError(f"shard {k}: missing hooks {missing}, unknown keys {unknown} (hooks: {self.hooks}).")
        start, stop = self.shard_range(k)
        want = stop - start if self.manifest.get("n_examples") is not None else None
        out = prepare_shard_tensors(k, tensors, self.hooks, self.manifest["dtype"], want)
        want = int(next(iter(out.values())).shape[0])
        meta = jsonable(meta or {}, "shard meta")
        data = st_save(out, metadata={"moras_interp.shard": json.dumps({"k": k, "meta": meta}, sort_keys=True)})
        sha = hashlib.sha256(data).hexdigest()
        if self.root is None:
            self._memory[k] = data
        else:
            atomic_write(self._shard_path(k), data)
        self.manifest["shards"][str(k)] = {"sha256": sha, "n": want, "meta": meta}
        if self._owner:
            self._write_manifest()
        return sha

    def adopt_shard(self, k: int, entry: dict[str, Any]) -> bool:
        """Record shard ``k`` written by another process (``entry`` = its manifest entry: sha256, n, meta) if
        its file exists and matches the sha256 and the manifest (header check); else warn and return False
        (it will be recomputed). Call :meth:`save_manifest` after adopting."""
        path = self._shard_path(k)
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != entry.get("sha256"):
            warnings.warn(f"{path} is missing or does not match the sha256 its rank recorded: shard {k} will be "
                          "recomputed.", StoreWarning, stacklevel=2)
            return False
        self.manifest["shards"][str(k)] = jsonable(entry, "shard entry")
        check_shard_header(self, k, path)
        return True

    def save_manifest(self) -> None:
        """Rewrite ``manifest.json`` atomically (after :meth:`adopt_shard`)."""
        self._write_manifest()

    def read_shard(self, k: int, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The tensors of completed shard k: all, or only ``names`` (only those bytes are read from disk)."""
        if not self.has_shard(k):
            raise KeyError(f"shard {k} has not been written (completed: {self.completed_shards()}).")
        if self.root is not None:
            return read_safetensors(self._shard_path(k), names)
        shard = st_load(self._memory[k])
        return shard if names is None else {n: shard[n] for n in names if n in shard}

    def load(self, name: str, *, allow_partial: bool = False) -> torch.Tensor:
        """Tensor ``name`` concatenated over shards in order: [n, ...].

        Raises if shards are missing unless ``allow_partial`` (then only completed shards are used).
        """
        if name not in self.hooks and name not in EXTRA_TENSORS:
            raise KeyError(f"unknown tensor {name!r}; hooks are {self.hooks}, extras {list(EXTRA_TENSORS)}.")
        done = self.completed_shards()
        if not allow_partial and self.n_shards is not None and len(done) < self.n_shards:
            why = "".join(f"; shard {k} was dropped when the store was opened: {r}"
                          for k, r in sorted(self.dropped.items()))
            raise ValueError(f"store {self.root or '(memory)'} incomplete: missing shards {self.missing_shards()}"
                             f"{why} (re-run the collection on the same directory to compute them, or pass "
                             "allow_partial=True).")
        if not done:
            raise ValueError("store has no completed shards.")
        parts = []
        for k in done:
            try:
                shard = self.read_shard(k, [name])
            except ReadError as e:
                raise KeyError(str(e)) from e
            if name not in shard:
                raise KeyError(f"shard {k} has no {name!r} tensor.")
            parts.append(shard[name])
        return torch.cat(parts)

    def labels(self, *, allow_partial: bool = False) -> torch.Tensor:
        """The ``labels`` tensor over all shards: [n] (``load("index")`` gives the index likewise)."""
        return self.load("labels", allow_partial=allow_partial)

    def __repr__(self) -> str:
        total = "?" if self.n_shards is None else self.n_shards
        where = "memory" if self.root is None else str(self.root)
        return (f"ActivationStore({where}, model={self.manifest['model_id']!r}, hooks={len(self.hooks)}, "
                f"shards {len(self.completed_shards())}/{total})")
