"""Where the LLaVA-1.5 calibration presets come from, and the check that a prototype matches it.

The authors' (x0, k) for LLaVA-1.5 were fitted with *their* unsafe prototype: 50 text-only requests (49
distinct; the list is theirs, we cannot redistribute it) sent in LLaVA's ``conv_llava_v1`` conversation with its
system message. Applied to a prototype built from other prompts or without that system message, the constants
describe another score distribution. A prototype records the SHA-256 of its prompt set (:func:`prompt_set_sha256`)
and its system prompt; :func:`check_preset` compares them with the preset's.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from moras_interp.moras.prompts import LLAVA_V1_SYSTEM

if TYPE_CHECKING:
    from moras_interp.moras.prototype import UnsafePrototype
    from moras_interp.moras.risk import Calibration

AUTHORS_PROMPTS_SHA256 = "c98c319b76133fe054f39523fdae172c20bd9ff1b73c6344941e50fce3c80c39"
"""SHA-256 of the authors' 50 prototype prompts (``parameters/get_unsafe_states.py`` of snumprlab/moras), in order."""

FIT_CONFIG: dict[str, Any] = {"n_tokens": 3, "gamma": 0.3, "stage2_eos": "stop", "score": "cosine",
                              "mapping": "sigmoid", "use_context": True}
"""The MoRAS options the authors' presets were fitted under (s depends on each; r on the mapping)."""

PRESET_INFO: dict[str, dict[str, Any]] = {
    "llava-1.5-7b": {"model": "llava-v1.5-7b", "prompt_sha256": AUTHORS_PROMPTS_SHA256, "system": LLAVA_V1_SYSTEM,
                     "n_prompts": 50, "note": "k = ln 99 / (1 − x0) = 15.955 (consistent)."},
    "llava-1.5-13b": {"model": "llava-v1.5-13b", "prompt_sha256": AUTHORS_PROMPTS_SHA256, "system": LLAVA_V1_SYSTEM,
                      "n_prompts": 50,
                      "note": f"inconsistent as published: ln 99 / (1 − 0.741) = {math.log(99) / (1 - 0.741):.3f}, "
                              "not 17.811; the authors' constants are kept unchanged."},
}
"""Provenance of each preset in :data:`moras_interp.moras.risk.PRESETS`."""


def prompt_set_sha256(prompts: Sequence[str]) -> str:
    """SHA-256 (hex) of the prompts in order, each encoded UTF-8 and followed by "\\n"."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode("utf-8") + b"\n")
    return h.hexdigest()


def check_preset(calibration: Calibration, prototype: UnsafePrototype, config: Any = None) -> None:
    """Raise ``ValueError`` when ``calibration`` is a preset that ``prototype`` was not built for (other prompt set
    or system prompt), or that ``config`` (a MoRASConfig) scores differently from the fit (:data:`FIT_CONFIG`:
    N, γ, EOS mode, score, mapping, context), unless the preset was forced (``Calibration.preset(name, force=True)``)."""
    if not calibration.method.startswith("preset:") or calibration.forced:
        return
    name = calibration.method.split(":", 1)[1]
    info = PRESET_INFO.get(name)
    if info is None:
        return
    prov = prototype.provenance
    got_sha, got_sys = prov.get("prompt_sha256"), prov.get("system")
    problems = []
    if got_sha != info["prompt_sha256"]:
        problems.append(f"its prompt set has sha256 {got_sha or 'unknown (not recorded)'}, the preset's "
                        f"{info['prompt_sha256']} (the authors' {info['n_prompts']} prompts)")
    if (got_sys or "") != info["system"]:
        problems.append(f"its system prompt is {got_sys!r}, the preset's the conv_llava_v1 system message "
                        "(prompts.LLAVA_V1_SYSTEM)")
    if config is not None:
        for key, want in FIT_CONFIG.items():
            got = getattr(config, key, want)
            if got != want and not (isinstance(want, float) and math.isclose(float(got), want)):
                problems.append(f"this MoRAS uses {key}={got!r}, the preset was fitted with {key}={want!r}")
    if problems:
        raise ValueError(
            f"Calibration preset {name!r} does not fit this prototype or setup: " + "; ".join(problems) + ". "
            "Build the prototype as the authors did (UnsafePrototype.build(model, prompts='their_prompts.txt', "
            "system=LLAVA_V1_SYSTEM), or MoRASConfig.authors()), fit your own calibration on labelled pairs, or "
            "apply the preset anyway with force_preset=True / Calibration.preset(name, force=True) / --force-preset.")
