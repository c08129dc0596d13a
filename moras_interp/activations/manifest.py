"""Checks of an activation store's manifest: its checksum, the identity diff against a requested manifest, and
every shard's header against the manifest (tensor names, dtype, number of examples)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from moras_interp.models.hooks import RENAMED

if TYPE_CHECKING:
    from moras_interp.activations.store import ActivationStore

FORMAT = "moras_interp.activation_store/2"
"""/2: hook names as renamed in 0.2 (``ln_final.hook_out``, ``hook_embed`` = token embeddings, ``hook_inputs_embeds``).
A /1 store is read as before unless it names a renamed hook (collected or edited): those are refused
(:func:`check_format`), since its ``ln_final.hook_normalized`` / ``hook_embed`` hold the old values."""
LEGACY_FORMATS = ("moras_interp.activation_store/1",)

IDENTITY_FIELDS = ("model_id", "hooks", "positions", "dataset_fingerprint", "dtype", "shard_size")
OPTIONAL_IDENTITY = ("identity", "n_examples", "label_names")  # compared too (absent on both sides = equal)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (without its own ``checksum``)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_format(manifest: dict[str, Any], path: Path) -> None:
    """Refuse a manifest of an unknown format, or of a format before the 0.2 hook rename naming a renamed hook."""
    fmt = manifest.get("format", LEGACY_FORMATS[0])
    if fmt == FORMAT:
        return
    if fmt not in LEGACY_FORMATS:
        raise ValueError(f"{path}: activation store of format {fmt!r}; this version of moras_interp reads {FORMAT!r} "
                         f"and {', '.join(LEGACY_FORMATS)}. Upgrade moras_interp or collect again into a new folder.")
    ident = manifest.get("identity")
    edits = ident.get("edits") if isinstance(ident, dict) else None
    named = [*manifest.get("hooks", []), *(e.get("hook") for e in edits or [] if isinstance(e, dict))]
    old = [h for h in RENAMED if h in named]
    if old:
        moves = ", ".join(f"{h!r} -> {RENAMED[h]!r}" for h in old)
        raise ValueError(
            f"{path} was written before the 0.2 hook rename ({fmt}) and names {old} (collected or edited), whose "
            f"values were renamed: {moves}. In 0.2 {old[0]!r} means another value (see 'Renamed in 0.2' in "
            "docs/hooks.md), so the store is not read or resumed. Collect again into a new folder with the new "
            f"names (e.g. names=[{RENAMED[old[0]]!r}]), or read it with moras_interp 0.1.")


def identity_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per identity field (dict fields: per key, e.g. ``identity.model_fingerprint``) that differs."""
    out = []
    for k in (*IDENTITY_FIELDS, *OPTIONAL_IDENTITY):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"  {k}.{s}: existing {a.get(s)!r} != requested {b.get(s)!r}"
                    for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s)]
        elif a != b:
            out.append(f"  {k}: existing {a!r} != requested {b!r}")
    return out


def check_shard_header(store: ActivationStore, k: int, path: Path) -> None:
    """Raise when shard ``k``'s header disagrees with the store's manifest (a hand-edited or foreign manifest)."""
    if store.n_shards is not None and k >= store.n_shards:
        raise ValueError(f"{path}: shard {k} lies beyond n_examples={store.manifest['n_examples']} of the "
                         f"manifest ({store.n_shards} shards): the manifest does not describe these shards.")
    start, stop = store.shard_range(k)
    want_dtype = getattr(torch, store.manifest["dtype"])
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        if not set(store.hooks) <= names:
            raise ValueError(f"{path} lacks hooks {sorted(set(store.hooks) - names)} listed in the manifest.")
        for name in names:
            sl = f.get_slice(name)
            n, dtype = sl.get_shape()[0], sl.get_dtype()
            if n != stop - start and store.manifest.get("n_examples") is not None:
                raise ValueError(f"{path}: {name!r} holds {n} examples but the manifest's n_examples="
                                 f"{store.manifest['n_examples']} and shard_size={store.shard_size} give "
                                 f"{stop - start} for shard {k}: the manifest does not describe this store.")
            if name in store.hooks and _ST_DTYPES.get(dtype) != want_dtype:
                raise ValueError(f"{path}: {name!r} is stored as {dtype} but the manifest says "
                                 f"{store.manifest['dtype']}: the manifest does not describe this store.")



__all__ = ["IDENTITY_FIELDS", "OPTIONAL_IDENTITY", "check_shard_header", "identity_diffs", "manifest_checksum"]
