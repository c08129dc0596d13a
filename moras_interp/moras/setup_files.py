"""The files :func:`moras_interp.moras.methods.prepare_moras` keeps in a results folder, validated on every read.

* ``setup_provenance.json``: what the prototype and calibration depend on (model fingerprint, processor,
  prompt set, calibration data content, N, γ, fit, fixed r); compared field by field before reuse.
* ``prototype.safetensors``: the unsafe prototype (its provenance carries the model fingerprint).
* ``calibration.json``: (x0, k), fixed r, calibration scores and labels, the prototype's content hash and the
  provenance fingerprint, sealed by a ``checksum`` of its own content, so a hand edit (e.g. x0 = 1.5) is
  refused rather than used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moras_interp.atomic import atomic_write_text
from moras_interp.identity import IdentityMismatchError, flat_diff, sha256_json
from moras_interp.models.hooks import RENAMED, renamed_notes
from moras_interp.moras.risk import Calibration
from moras_interp.moras.states import FINAL
from moras_interp.readers import ReadError, check_fields, read_json

PROTOTYPE, CALIBRATION, PROVENANCE = "prototype.safetensors", "calibration.json", "setup_provenance.json"
FILES = (PROTOTYPE, CALIBRATION, PROVENANCE)


def check_provenance(folder: Path, prov: dict[str, Any]) -> None:
    """Refuse ``folder`` when its setup was built differently (per-field diff) or without provenance."""
    path = folder / PROVENANCE
    if not path.exists():
        present = [f for f in (PROTOTYPE, CALIBRATION) if (folder / f).exists()]
        if present:
            raise IdentityMismatchError(
                f"{folder} holds {', '.join(present)} but no {PROVENANCE}, so they cannot be matched to this run "
                "(written by an older version or by hand). Pass --overwrite (overwrite=True) or use another folder.")
        atomic_write_text(path, json.dumps(prov, indent=1, sort_keys=True))
        return
    old = read_json(path, what="a setup provenance file")
    hooks = old.get("prototype_hooks")
    if isinstance(hooks, list) and FINAL not in hooks and any(h in RENAMED for h in hooks):
        # every setup since 0.2 has FINAL among its prototype hooks; one without it predates the rename
        raise IdentityMismatchError(
            f"{path} was written before the 0.2 hook rename (prototype_hooks {hooks}): " + renamed_notes(str(hooks))
            + "Its prototype and calibration are keyed by the old names and cannot be matched to this run. Pass "
            "--overwrite (overwrite=True) to rebuild them, or use another output folder.")
    diff = flat_diff(old, json.loads(json.dumps(prov)))
    if diff:
        raise IdentityMismatchError(
            f"{folder} holds a prototype/calibration built differently:\n" + "\n".join(diff)
            + "\nReusing it would mix runs: pass --overwrite (overwrite=True) to rebuild them, or use another "
            "output folder.")


def validate_calibration(d: dict[str, Any], where: str) -> Calibration:
    """The :class:`Calibration` in ``d``, with types and ranges checked: x0 in [0, 1] (s is a cosine of
    probability vectors, so outside it r would be nearly constant), k finite and > 0 (risk rises with s)."""
    check_fields(d, {"x0": (int, float), "k": (int, float), "method": str}, where)
    x0, k = float(d["x0"]), float(d["k"])
    if not (math.isfinite(x0) and 0.0 <= x0 <= 1.0):
        raise ReadError(f"{where}: x0 = {d['x0']!r} is outside [0, 1] (similarities s lie in [0, 1]).")
    if not (math.isfinite(k) and k > 0):
        raise ReadError(f"{where}: k = {d['k']!r} must be finite and > 0 (r must rise with the similarity).")
    return Calibration.from_dict(d)


def _sealed(body: dict[str, Any]) -> dict[str, Any]:
    return body | {"checksum": sha256_json(body)}


def write_calibration(path: Path, setup_dict: dict[str, Any], prototype_sha256: str, provenance: dict[str, Any]
                      ) -> None:
    """Write ``calibration.json``: the setup, the prototype's content hash, the provenance fingerprint, sealed."""
    validate_calibration(setup_dict["calibration"], f"{path} (being written)")
    body = json.loads(json.dumps(setup_dict)) | {"prototype_sha256": prototype_sha256,
                                                 "provenance_sha256": sha256_json(provenance)}
    atomic_write_text(path, json.dumps(_sealed(body), indent=1))


def read_calibration(path: Path, prototype_sha256: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """The validated content of ``calibration.json`` (keys of ``MoRASSetup.to_dict``); refuses a hand-edited
    file, another prototype, another provenance, bad types or ranges, naming the file and field."""
    d = read_json(path, what="a calibration file")
    check_fields(d, {"calibration": dict, "fixed_r": (int, float), "fixed_r_rule": str, "scores": list,
                     "labels": list, "prototype_sha256": str, "provenance_sha256": str, "checksum": str}, str(path))
    body = {k: v for k, v in d.items() if k != "checksum"}
    if sha256_json(body) != d["checksum"]:
        raise ReadError(f"{path} was edited by hand (its content no longer matches its checksum): a changed x0, k "
                        "or fixed r would silently change every risk. Restore it, or rebuild it with --overwrite.")
    if d["prototype_sha256"] != prototype_sha256:
        raise IdentityMismatchError(f"{path} was fitted with another unsafe prototype than {path.parent / PROTOTYPE}: "
                                    "rebuild both with --overwrite (overwrite=True).")
    if d["provenance_sha256"] != sha256_json(provenance):
        raise IdentityMismatchError(f"{path} was fitted for another setup than {path.parent / PROVENANCE} "
                                    "describes: rebuild it with --overwrite (overwrite=True).")
    validate_calibration(d["calibration"], f"{path}: calibration")
    if not 0.0 <= float(d["fixed_r"]) <= 1.0:
        raise ReadError(f"{path}: fixed_r = {d['fixed_r']!r} is outside [0, 1].")
    scores, labels = d["scores"], d["labels"]
    if len(scores) != len(labels) or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                             and math.isfinite(s) for s in scores) \
            or not all(isinstance(y, bool) for y in labels):
        raise ReadError(f"{path}: 'scores' must be finite numbers and 'labels' booleans of the same length.")
    return body


__all__ = ["CALIBRATION", "FILES", "PROTOTYPE", "PROVENANCE", "check_provenance", "read_calibration",
           "validate_calibration", "write_calibration"]
