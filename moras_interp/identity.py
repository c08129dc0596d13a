"""One run identity: fingerprints of everything that determines an artefact's content, compared before reuse.

Every resumable or reusable artefact (evaluation folder, ablation cache, activation store, prototype,
calibration) records a fingerprint; it is reused only when the fingerprint is equal, otherwise the run is
refused with a per-field diff and the fix (``--overwrite`` / ``overwrite=True``, or a new folder).
The fingerprints themselves (model, processor, data, tensors) live in :mod:`moras_interp.fingerprints`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from moras_interp.atomic import atomic_write_text
from moras_interp.fingerprints import (
    canonical_json,
    data_fingerprint,
    model_fingerprint,
    model_identity,
    package_version,
    processor_fingerprint,
    sha256_json,
    tensors_fingerprint,
    weight_files,
    weights_fingerprint,
)

IDENTITY_FILE = "identity.json"


class IdentityMismatchError(ValueError):
    """An artefact was made by a different run; the message lists every differing field and the fix."""


# ---- the identity record --------------------------------------------------------------------------------
def flat_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """One line per differing leaf of two JSON-like values (dicts compared per key, dotted names)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"  {key}: (absent) ≠ requested {_short(new[k])}")
            elif k not in new:
                out.append(f"  {key}: existing {_short(old[k])} ≠ (absent)")
            else:
                out += flat_diff(old[k], new[k], key)
        return out
    if canonical_json(old) == canonical_json(new) or (_isnan(old) and _isnan(new)):
        return []
    return [f"  {prefix or 'value'}: existing {_short(old)} ≠ requested {_short(new)}"]


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 90 else r[:87] + "..."


@dataclass
class RunIdentity:
    """Everything that determines an artefact's content (JSON-able values; compared field by field).

    Attributes:
        kind: what the folder holds ("evaluation", "ablation", ...).
        model: :func:`model_identity` (+ ``fingerprint``). processor: :func:`processor_fingerprint`.
        data: :func:`data_fingerprint`. methods: name → every option of that method (incl. prototype and
        calibration content hashes). seed, judge (name + options), generation (max_new_tokens, greedy, ...).
        extra: anything else the caller's content depends on. package_version: ``moras_interp.__version__``.
    """

    kind: str
    model: dict[str, Any] = field(default_factory=dict)
    processor: str | None = None
    data: str | None = None
    methods: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    judge: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    package_version: str = field(default_factory=package_version)

    def to_dict(self) -> dict[str, Any]:
        """JSON round trip of the fields (tuples → lists), so stored and fresh identities compare equal."""
        return json.loads(canonical_json(asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "identity") -> RunIdentity:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown or "kind" not in d:
            raise IdentityMismatchError(f"{where}: not a run identity (unknown fields {unknown}, "
                                        f"kind {'present' if 'kind' in d else 'missing'}).")
        return cls(**dict(d))

    def fingerprint(self) -> str:
        return sha256_json(self.to_dict())

    def diff(self, other: RunIdentity, merge: Sequence[str] = ()) -> list[str]:
        """One line per differing field (nested fields dotted, e.g. ``methods.adashield.position``); for the
        dict fields named in ``merge`` only the keys present on both sides are compared."""
        old, new = self.to_dict(), other.to_dict()
        for f in merge:
            common = set(old[f]) & set(new[f])
            old[f] = {k: v for k, v in old[f].items() if k in common}
            new[f] = {k: v for k, v in new[f].items() if k in common}
        return flat_diff(old, new)


def check_or_write(folder: str | os.PathLike, identity: RunIdentity, overwrite: bool = False, *,
                   artefacts: Sequence[str] = (), merge: Sequence[str] = (), name: str = IDENTITY_FILE) -> str:
    """Compare ``identity`` with ``folder/identity.json``; returns "new", "same" or "overwritten".

    Equal → "same" (reuse; the dict fields in ``merge``, e.g. ``methods``, may gain keys, which are added to
    the stored identity). Different (or ``artefacts`` present without any identity file, i.e. written by an
    older version or by hand) → :class:`IdentityMismatchError` with the per-field diff and the fix.
    ``overwrite=True`` deletes the listed ``artefacts`` (files or folders inside ``folder``) and the stored
    identity first, so the folder starts afresh.
    """
    from moras_interp.readers import read_json

    root = Path(folder)
    path = root / name
    if overwrite:
        had = [a for a in (*artefacts, name) if (root / a).exists()]
        for a in had:
            p = root / a
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        _write_identity(path, identity)
        return "overwritten" if had else "new"
    present = [a for a in artefacts if (root / a).exists()]
    if path.exists():
        old = RunIdentity.from_dict(read_json(path), str(path))
        diffs = old.diff(identity, merge)
        if not diffs:
            merged = identity.to_dict()
            for f in merge:
                merged[f] = old.to_dict()[f] | merged[f]
            if merged != old.to_dict():
                _write_identity(path, RunIdentity.from_dict(merged))
            return "same"
        why = f"{root} holds {old.kind} results of a different run:\n" + "\n".join(diffs)
    elif present:
        why = (f"{root} holds {', '.join(present)} but no {name} (written by an older version or by hand), so "
               "they cannot be matched to this run")
    else:
        _write_identity(path, identity)
        return "new"
    from moras_interp.models.hooks import renamed_notes

    notes = renamed_notes(why)  # e.g. a steer_hooks diff between names before and after the 0.2 rename
    raise IdentityMismatchError(why + ("\n" + notes.strip() if notes else "") + "\nReusing them would mix runs: pass "
                                "--overwrite (overwrite=True) to discard them, or use a new output folder.")


def _write_identity(path: Path, identity: RunIdentity) -> None:
    atomic_write_text(path, json.dumps(identity.to_dict(), indent=1, sort_keys=True))


__all__ = ["IdentityMismatchError", "RunIdentity", "canonical_json", "check_or_write", "data_fingerprint",
           "flat_diff", "model_fingerprint", "model_identity", "package_version", "processor_fingerprint",
           "sha256_json", "tensors_fingerprint", "weight_files", "weights_fingerprint"]
