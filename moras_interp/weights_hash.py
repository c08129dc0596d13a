"""Content hashes of model weights, cheap enough for 14 GB checkpoints (what :func:`moras_interp.identity.
model_identity` records as ``weights``; the scheme, and what it can miss, is documented there)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM

FULL_HASH_BYTES = 256 * 2**20
"""safetensors files up to this size are hashed completely."""
BLOCKS_PER_TENSOR = 8
"""Evenly spaced 4 KiB blocks hashed per tensor of a larger file (plus its first and last block)."""
BLOCK = 4096
FULL_HASH_ELEMENTS = 2**25
"""In-memory models with at most this many parameters are hashed completely."""
_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def file_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _FILE_CACHE:
        return _FILE_CACHE[key]
    h = hashlib.sha256(f"size={st.st_size}".encode())
    with open(path, "rb") as fh:
        fd = fh.fileno()
        if st.st_size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: fh.read(2**20), b""):
                h.update(chunk)
        else:
            (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
            header = os.pread(fd, n, 8)
            h.update(header)
            base = 8 + n
            meta = json.loads(header)
            for name in sorted(k for k in meta if k != "__metadata__"):
                start, stop = meta[name]["data_offsets"]
                size = stop - start
                if size <= BLOCK * (BLOCKS_PER_TENSOR + 2):
                    offsets = [start]
                    lengths = [size]
                else:
                    step = (size - BLOCK) / (BLOCKS_PER_TENSOR + 1)
                    offsets = [start + round(i * step) for i in range(BLOCKS_PER_TENSOR + 2)]
                    lengths = [BLOCK] * len(offsets)
                for off, ln in zip(offsets, lengths):
                    h.update(os.pread(fd, ln, base + off))
    _FILE_CACHE[key] = digest = h.hexdigest()
    return digest


def weight_files(model: MLLM) -> list[Path]:
    """The ``*.safetensors`` files ``model`` was loaded from: its local folder, or the Hugging Face cache
    snapshot of its hub id at the loaded commit; [] for in-memory models."""
    src = getattr(model.hf.config, "_name_or_path", "") or ""
    for cand in (src, getattr(model, "model_id", "")):
        p = Path(str(cand)).expanduser() if cand else None
        if p is None:
            continue
        if not p.is_dir():
            p = _hub_snapshot(str(cand), getattr(model.hf.config, "_commit_hash", None))
        files = sorted(p.glob("*.safetensors")) if p is not None and p.is_dir() else []
        if files:
            return files
    return []


def _hub_snapshot(repo_id: str, commit: str | None) -> Path | None:
    """The local snapshot folder of a hub checkpoint already in the cache (nothing is downloaded), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", revision=commit)
    except Exception:  # not a repo id, or no hub library: treated as an in-memory model
        return None
    return Path(hit).parent if isinstance(hit, str) else None


@torch.no_grad()
def parameter_hash(model: MLLM) -> tuple[str, str]:
    params = list(model.hf.named_parameters())
    full = sum(p.numel() for _, p in params) <= FULL_HASH_ELEMENTS
    h = hashlib.sha256()
    for name, p in params:
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:".encode())
        flat = p.detach().reshape(-1)
        if not full:
            idx = torch.linspace(0, flat.numel() - 1, min(64, flat.numel()), device=flat.device).long()
            flat = flat[idx]
        h.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest(), "parameters (all bytes)" if full else "parameters (64 sampled values per tensor)"


def param_state(hf: torch.nn.Module) -> tuple[tuple[str, int, int], ...]:
    """(name, storage pointer, in-place version counter) of every parameter: changes when a weight is edited in
    place (``p.mul_``, optimiser steps) or replaced, so identities hashed from the files can tell the weights in
    memory no longer match them."""
    return tuple((n, p.data_ptr(), p._version) for n, p in hf.named_parameters())


__all__ = ["BLOCK", "BLOCKS_PER_TENSOR", "FULL_HASH_BYTES", "FULL_HASH_ELEMENTS", "file_hash", "param_state", "parameter_hash",
           "weight_files"]
