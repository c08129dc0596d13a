"""Setting up the methods an evaluation compares: the unsafe prototype, the calibration, the fixed r, and the
method objects by name (``none``, ``moras``, ``fixed``, ``adashield``, ``ecso``).

:func:`prepare_moras` saves the prototype and calibration into the results folder and reuses them when the
run is resumed, so a resumed run scores with exactly the same (u_t, x0, k, fixed r).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.atomic import folder_lock
from moras_interp.identity import data_fingerprint, model_fingerprint, processor_fingerprint, sha256_json
from moras_interp.moras.baselines import ECSO, AdaShieldS, FixedSteering, Method, NoDefence
from moras_interp.moras.pipeline import MoRAS, MoRASConfig
from moras_interp.moras.presets import check_preset, prompt_set_sha256
from moras_interp.moras.prompts import CONTEXT_PROMPT, ECSO_CAPTION_PROMPT
from moras_interp.moras.prototype import UnsafePrototype, default_harmful_prompts_for
from moras_interp.moras.risk import PRESETS, Calibration
from moras_interp.moras.run_identity import prototype_fingerprint
from moras_interp.moras.setup_files import FILES as SETUP_FILES
from moras_interp.moras.setup_files import check_provenance, read_calibration, write_calibration

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM

METHODS: tuple[str, ...] = ("none", "moras", "fixed", "adashield", "ecso")
"""Method names understood by :func:`build_methods` (and ``moras-interp moras --methods``)."""


@dataclass
class MoRASSetup:
    """The fitted pieces MoRAS and the fixed-strength baseline need.

    Attributes:
        prototype: u_t [N, d]. calibration: (x0, k) and how they were fitted.
        fixed_r: the strength of the fixed-strength baseline; ``fixed_r_rule`` says how it was chosen.
        scores / labels: calibration-set similarities s and labels (True = unsafe); empty for presets.
    """

    prototype: UnsafePrototype
    calibration: Calibration
    fixed_r: float
    fixed_r_rule: str
    scores: list[float] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"calibration": self.calibration.to_dict(), "fixed_r": self.fixed_r, "fixed_r_rule": self.fixed_r_rule,
                "scores": self.scores, "labels": self.labels}


def choose_fixed_r(calibration: Calibration, scores: Sequence[float], labels: Sequence[bool],
                   fixed_r: float | str = "auto") -> tuple[float, str]:
    """The fixed-strength baseline's r: a number as given, or ``"auto"`` = the mean r MoRAS assigns to the
    unsafe calibration queries (the strength an unsafe query typically gets), or 0.5 without calibration data."""
    if fixed_r != "auto":
        r = float(fixed_r)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"fixed r must be in [0, 1], got {r}.")
        return r, "given"
    unsafe = [s for s, y in zip(scores, labels) if y]
    if not unsafe:
        return 0.5, "0.5 (no calibration scores, e.g. a preset calibration)"
    r = float(calibration.risk(torch.tensor(unsafe)).mean())
    return r, "mean calibrated r of the unsafe calibration queries"


def _provenance(model: MLLM, calibration: Any, harmful_prompts: Sequence[str] | None, fit: str,
                fixed_r: float | str, cfg: MoRASConfig) -> dict[str, Any]:
    """What the saved prototype and calibration depend on (compared before they are reused)."""
    if isinstance(calibration, str):
        cal = calibration
    elif isinstance(calibration, Calibration):
        cal = f"Calibration(x0={calibration.x0}, k={calibration.k})"
    else:
        items = list(calibration)
        cal = f"{len(items)} labelled examples, sha256 {data_fingerprint(items)}"
    prompts = "default" if not harmful_prompts else \
        "sha1 " + hashlib.sha1("\n".join(harmful_prompts).encode()).hexdigest()[:12]
    return {"model": model.model_id, "n_tokens": cfg.n_tokens, "gamma": cfg.gamma, "calibration": cal, "fit": fit,
            "fixed_r": str(fixed_r), "harmful_prompts": prompts, "system": cfg.system or "",
            "stage2_eos": cfg.stage2_eos, "score": cfg.score, "prototype_hooks": list(cfg.prototype_hooks()),
            "model_fingerprint": model_fingerprint(model), "processor": processor_fingerprint(model.processor),
            "config": sha256_json(vars(cfg))}


def prepare_moras(model: MLLM, *, calibration: str | Calibration | Sequence[Any], out: str | Path | None = None,
                  harmful_prompts: Sequence[str] | None = None, fit: str = "official", fixed_r: float | str = "auto",
                  config: MoRASConfig | None = None, batch_size: int = 8, progress: bool = True,
                  force_preset: bool = False, overwrite: bool = False) -> MoRASSetup:
    """Build (or, when ``out`` holds them, reload) the prototype and calibration.

    Args:
        calibration: a preset name (``"llava-1.5-7b"``, ``"llava-1.5-13b"``), a :class:`Calibration`, or
            labelled (image, question, label) examples scored with MoRAS stages 1–2 and fitted with ``fit``.
        out: folder for ``prototype.safetensors`` and ``calibration.json`` (reused if present).
        harmful_prompts: prototype prompts (default: the toy list for the organism, the general list otherwise).
        fixed_r: the fixed-strength baseline's r, or "auto" (see :func:`choose_fixed_r`).
        config: MoRAS options (N, γ, prompts) used for calibration.
        force_preset: apply a preset although the prototype's prompt set / system prompt are not the ones the
            preset was fitted with (otherwise MoRAS refuses it, :func:`moras_interp.moras.presets.check_preset`).
        overwrite: rebuild the prototype and calibration even when ``out`` holds some (of another setup).

    The files in ``out`` are reused only when their provenance (model fingerprint, processor, prompts,
    calibration data content, options) is equal and they pass validation (:mod:`moras_interp.moras.setup_files`).
    """
    if out is None:
        return _prepare(model, calibration, None, harmful_prompts, fit, fixed_r, config, batch_size, progress,
                        force_preset)
    with folder_lock(out):
        if overwrite:
            for f in SETUP_FILES:
                (Path(out) / f).unlink(missing_ok=True)
        fresh = [f for f in SETUP_FILES if not (Path(out) / f).exists()]
        try:
            return _prepare(model, calibration, out, harmful_prompts, fit, fixed_r, config, batch_size, progress,
                            force_preset)
        except BaseException:  # a failed setup leaves nothing behind that would block or mislead the next run
            for f in fresh:
                (Path(out) / f).unlink(missing_ok=True)
            raise


def _prepare(model: MLLM, calibration: str | Calibration | Sequence[Any], out: str | Path | None,
             harmful_prompts: Sequence[str] | None, fit: str, fixed_r: float | str, config: MoRASConfig | None,
             batch_size: int, progress: bool, force_preset: bool = False) -> MoRASSetup:
    cfg = config or MoRASConfig()
    folder = Path(out) if out is not None else None
    proto_p, cal_p = (None, None) if folder is None else (folder / "prototype.safetensors", folder / "calibration.json")
    prov = _provenance(model, calibration, harmful_prompts, fit, fixed_r, cfg)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        check_provenance(folder, prov)
    if proto_p is not None and proto_p.exists():
        proto = UnsafePrototype.load(proto_p)
        proto.check(model)
    else:
        if isinstance(calibration, str) and calibration in PRESETS:  # refuse a mismatched preset before the build
            plist = list(harmful_prompts) if harmful_prompts else default_harmful_prompts_for(model)
            planned = {"prompt_sha256": prompt_set_sha256(plist), "system": cfg.system or ""}
            check_preset(Calibration.preset(calibration, force=force_preset), UnsafePrototype({}, plist, [], planned),
                         cfg)
        proto = UnsafePrototype.build(model, list(harmful_prompts) if harmful_prompts else None, cfg.n_tokens,
                                      progress=progress, system=cfg.system, eos=cfg.stage2_eos, hooks=cfg.prototype_hooks())
        if proto_p is not None:
            proto.save(proto_p)
    if cal_p is not None and cal_p.exists():
        d = read_calibration(cal_p, prototype_fingerprint(proto), prov)
        return MoRASSetup(proto, Calibration.from_dict(d["calibration"]), float(d["fixed_r"]), d["fixed_r_rule"],
                          d["scores"], d["labels"])
    scores: list[float] = []
    labels: list[bool] = []
    if isinstance(calibration, Calibration):
        cal = calibration
    elif isinstance(calibration, str):
        if calibration not in PRESETS:
            raise ValueError(f"Unknown calibration preset {calibration!r}; presets: {', '.join(PRESETS)} "
                             "(or pass labelled examples / a labelled file).")
        cal = Calibration.preset(calibration, force=force_preset)
        if calibration.rsplit("-", 1)[0].replace(".", "") not in model.model_id.lower().replace(".", "").replace("_", "-"):
            warnings.warn(f"Calibration preset {calibration!r} was fitted by the authors on {calibration}; "
                          f"{model.model_id!r} is another model, so (x0, k) may not transfer: fit it on labelled "
                          "pairs instead.", stacklevel=3)
    else:
        m = MoRAS.calibrate(model, list(calibration), prototype=proto, method=fit, batch_size=batch_size,
                            progress=progress, **vars(cfg))
        assert m.calibration is not None
        cal = m.calibration
        scores = [float(t.similarity or 0.0) for t in m.calibration_traces]
        labels = [t.label == "unsafe" for t in m.calibration_traces]
    r, rule = choose_fixed_r(cal, scores, labels, fixed_r)
    setup = MoRASSetup(proto, cal, r, rule, scores, labels)
    if cal_p is not None:
        write_calibration(cal_p, setup.to_dict(), prototype_fingerprint(proto), prov)
    return setup


def build_methods(model: MLLM, names: Sequence[str], setup: MoRASSetup | None = None, *,
                  config: MoRASConfig | None = None, ecso_caption_prompt: str = ECSO_CAPTION_PROMPT,
                  adashield_position: str = "append") -> dict[str, Method]:
    """Method objects by name, in the given order (``moras`` and ``fixed`` need ``setup``)."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
    if not names:
        raise ValueError(f"No methods given; choose from {', '.join(METHODS)}.")
    if setup is None and any(n in ("moras", "fixed") for n in names):
        raise ValueError("'moras' and 'fixed' need a prototype and calibration: pass setup=prepare_moras(...).")
    out: dict[str, Method] = {}
    system = (config or MoRASConfig()).system  # every method in the same conversation (authors: conv_llava_v1)
    for n in names:
        if n == "none":
            out[n] = NoDefence(model, system=system)
        elif n == "adashield":
            out[n] = AdaShieldS(model, position=adashield_position, system=system)
        elif n == "ecso":
            out[n] = ECSO(model, caption_prompt=ecso_caption_prompt, system=system)
        elif n == "moras":
            assert setup is not None
            out[n] = MoRAS(model, setup.prototype, setup.calibration, MoRASConfig(**vars(config or MoRASConfig())))
        else:
            assert setup is not None
            base = {k: v for k, v in vars(config or MoRASConfig()).items() if k != "fixed_r"}
            out[n] = FixedSteering(model, setup.prototype, setup.fixed_r, config=MoRASConfig(**base))
    return out


TOY_ECSO_CAPTION_PROMPT = CONTEXT_PROMPT
"""The organism was trained to caption with the MoRAS stage-1 prompt only, so its ECSO baseline uses that."""

__all__ = ["METHODS", "TOY_ECSO_CAPTION_PROMPT", "MoRASSetup", "build_methods", "choose_fixed_r", "prepare_moras"]
