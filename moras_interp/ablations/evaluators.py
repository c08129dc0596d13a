"""Standard evaluators for :func:`moras_interp.ablations.run_grid`.

An evaluator maps ``(setting, dataset) -> one metrics dict per example``. Factor names are the keys of a
setting:

* :func:`moras_evaluator`: any :class:`~moras_interp.moras.pipeline.MoRASConfig` field (``n_tokens``,
  ``gamma``, ``fixed_r``, ``use_context``, ``safety_prompt``, ``risk_mode``, ``context_prompt``…) plus
  the shorthands ``steer_layer`` (int or list of ints: steer ``blocks.{l}.hook_resid_post`` instead of
  after the final norm; the prototype is rebuilt there), ``mask_top_visual`` (fraction of the top image
  tokens whose attention is removed in every layer during the answer), ``safety_prompt_on`` (bool) and
  ``prompt_variant`` (a key of the ``prompt_variants`` dict given to the evaluator, applied to each question).
  Metrics: ``refused``, ``risk``, ``similarity``, ``latency_s`` and the example's ``label``.
* :func:`attention_evaluator`: factors ``layer`` (int or "all"), ``heads`` ("all", "top-visual" or a
  threshold float), ``context`` (bool: reformulate with the model's own visual context) and
  ``mask_top_visual``; metrics ``share``, ``ratio`` (region share of last-token image attention on the
  example's ``box``) and ``image_mass``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.ablations.runner import evaluator_identity
from moras_interp.attention.interventions import MaskTopImageTokens, attention_edits
from moras_interp.attention.trace import cross_modal_attention
from moras_interp.eval.judge import KeywordJudge, RefusalJudge
from moras_interp.eval.labels import describe, safety_label
from moras_interp.identity import (
    canonical_json,
    data_fingerprint,
    model_fingerprint,
    processor_fingerprint,
    sha256_json,
)
from moras_interp.moras.pipeline import MoRAS, MoRASConfig, unpack_examples
from moras_interp.moras.prompts import reformulate
from moras_interp.moras.prototype import UnsafePrototype
from moras_interp.moras.risk import Calibration
from moras_interp.moras.run_identity import judge_config, prototype_fingerprint
from moras_interp.moras.states import FINAL

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM

Evaluator = Callable[[dict[str, Any], Sequence[Any]], list[dict[str, Any]]]
RECALIBRATE = ("score", "n_tokens", "gamma", "stage2_eos")
"""Options that change what the similarity s measures: a calibration (x0, k) fitted under other values does not
apply, so :func:`moras_evaluator` refits it per setting (``calibration_data``) or refuses."""
_SHORTHANDS = ("steer_layer", "mask_top_visual", "safety_prompt_on", "prompt_variant")


def _label(it: Any, index: int) -> str | None:
    """"unsafe" / "safe" by the one label rule (:func:`moras_interp.eval.labels.safety_label`; a utility example
    with a gold answer is safe), None when unlabelled; an unknown label is an error naming the example."""
    return safety_label(it, where=describe(it, index), required=False)


def moras_evaluator(model: MLLM, prototype: UnsafePrototype, calibration: Calibration | None, *,
                    judge: RefusalJudge | None = None, base: MoRASConfig | None = None,
                    max_new_tokens: int | None = None,
                    batch_size: int = 8, prompt_variants: dict[str, Callable[[str], str]] | None = None,
                    calibration_data: Sequence[Any] | None = None, progress: bool = False) -> Evaluator:
    """An evaluator running MoRAS (or a fixed-r / ablated variant) per setting; see the module docstring.

    ``calibration`` is the (x0, k) fitted under ``base``. A setting that changes one of :data:`RECALIBRATE`
    (score, N, γ, stage-2 EOS mode) with an adaptive r gets (x0, k) refitted on ``calibration_data`` (labelled
    pairs, the official recipe or the calibration's own method) once per such configuration; without
    ``calibration_data`` it is refused, since r would be computed with constants fitted for another score.
    ``max_new_tokens``: answer length for every setting; None (default) uses the setting's / ``base``'s
    ``MoRASConfig.max_new_tokens`` (64 ours, 512 under the authors' preset), so it can be an ablation factor.
    """
    judge = judge or KeywordJudge()
    base_cfg = base or MoRASConfig()
    fits: dict[str, Calibration] = {}
    protos: dict[tuple[int, tuple[str, ...], str], UnsafePrototype] = {
        (prototype.n_tokens, tuple(prototype.states), prototype.provenance.get("eos", "stop")): prototype}

    def proto_for(n: int, hooks: tuple[str, ...], eos: str) -> UnsafePrototype:
        for (pn, phooks, peos), p in protos.items():
            if pn == n and set(hooks) <= set(phooks) and peos == eos:
                return p
        if not prototype.prompts:
            raise ValueError(f"This setting needs the unsafe prototype at N={n}, hooks {list(hooks)}, EOS {eos!r}, "
                             "but the given prototype records no prompts to rebuild it from (e.g. "
                             "UnsafePrototype.from_tensor): pass a prototype built with UnsafePrototype.build, or "
                             "keep those factors at the prototype's own values.")
        p = UnsafePrototype.build(model, prototype.prompts, n, hooks=hooks, progress=progress,
                                  system=prototype.provenance.get("system") or None, eos=eos)
        protos[(n, tuple(p.states), eos)] = p
        return p

    def evaluate(setting: dict[str, Any], dataset: Sequence[Any]) -> list[dict[str, Any]]:
        cfg = dict(vars(base or MoRASConfig()))
        unknown = [k for k in setting if k not in cfg and k not in _SHORTHANDS]
        if unknown:
            raise KeyError(f"Unknown ablation factor(s) {unknown}: use MoRASConfig fields or {list(_SHORTHANDS)}.")
        if max_new_tokens is not None and "max_new_tokens" in setting:
            raise ValueError(f"The grid varies max_new_tokens ({setting['max_new_tokens']!r}) but the evaluator fixes "
                             f"it (moras_evaluator(..., max_new_tokens={max_new_tokens})): drop one of the two.")
        cfg.update({k: v for k, v in setting.items() if k in cfg})
        if setting.get("steer_layer") is not None:
            ls = setting["steer_layer"]
            cfg["steer_hooks"] = tuple(f"blocks.{l}.hook_resid_post" for l in ([ls] if isinstance(ls, int) else ls))
        if setting.get("safety_prompt_on") is False:
            cfg["safety_prompt"] = None
        if setting.get("mask_top_visual"):
            cfg["attention_edits"] = [MaskTopImageTokens(fraction=float(setting["mask_top_visual"]))]
            cfg["attention_edit_stages"] = ("answer",)
        ims, qs, _ = unpack_examples(dataset, labels=False)
        labels = [_label(it, i) for i, it in enumerate(dataset)]  # checked before the model runs
        if setting.get("prompt_variant") is not None:
            if not prompt_variants or setting["prompt_variant"] not in prompt_variants:
                raise KeyError(f"prompt_variant {setting['prompt_variant']!r} is not in the evaluator's "
                               f"prompt_variants {sorted(prompt_variants or {})}.")
            qs = [prompt_variants[setting["prompt_variant"]](q) for q in qs]
        proto = proto_for(int(cfg["n_tokens"]), tuple(dict.fromkeys((FINAL, *cfg["steer_hooks"]))),
                          str(cfg.get("stage2_eos", "stop")))
        m = MoRAS(model, proto, calibration_for(cfg, proto), MoRASConfig(**cfg))
        t0 = time.perf_counter()
        traces = m.run(ims, qs, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
        dt = (time.perf_counter() - t0) / len(traces)
        refused = judge([t.answer for t in traces], qs)
        return [{"label": lab, "refused": bool(rf), "risk": t.risk, "similarity": t.similarity,
                 "latency_s": dt, "answer": t.answer} for lab, t, rf in zip(labels, traces, refused)]

    def calibration_for(cfg: dict[str, Any], proto: UnsafePrototype) -> Calibration | None:
        changed = [k for k in RECALIBRATE if cfg[k] != getattr(base_cfg, k)]
        if calibration is None or cfg.get("fixed_r") is not None or not changed:
            return calibration
        if calibration_data is None:
            raise ValueError(f"This setting changes {', '.join(f'{k}={cfg[k]!r}' for k in changed)} from the base "
                             "config the calibration (x0, k) was fitted under, so its r would be meaningless: give "
                             "moras_evaluator(..., calibration_data=labelled_pairs) to refit (x0, k) per setting, "
                             "or use fixed_r / risk_mode factors.")
        key = canonical_json({k: cfg[k] for k in (*RECALIBRATE, "steer_hooks")})
        if key not in fits:
            method = calibration.method if calibration.method in ("official", "logistic") else "official"
            fitted = MoRAS.calibrate(model, list(calibration_data), prototype=proto, method=method,
                                     batch_size=batch_size, progress=progress,
                                     **{k: v for k, v in cfg.items() if k != "fixed_r"})
            assert fitted.calibration is not None
            fits[key] = fitted.calibration
        return fits[key]

    evaluate.identity = {  # type: ignore[attr-defined]  # what run_grid's cache is keyed on
        "evaluator": "moras", "model": model_fingerprint(model), "processor": processor_fingerprint(model.processor),
        "prototype": prototype_fingerprint(prototype), "calibration": None if calibration is None else
        calibration.to_dict(), "judge": judge_config(judge), "base": canonical_json(vars(base or MoRASConfig())),
        "max_new_tokens": max_new_tokens,
        "calibration_data": None if calibration_data is None else data_fingerprint(list(calibration_data)),
        "prompt_variants": {k: evaluator_identity(f) for k, f in (prompt_variants or {}).items()}}
    return evaluate


def attention_evaluator(model: MLLM, *, contexts: Sequence[str] | None = None, batch_size: int = 8) -> Evaluator:
    """An evaluator of the region share of last-token image attention on each example's ``box``.

    Args:
        contexts: visual contexts per example (index-aligned with the dataset) for ``context=True``; None =
            generate them once with the model (MoRAS stage 1) on first use.
    """
    cache: dict[str, list[str]] = {}

    def evaluate(setting: dict[str, Any], dataset: Sequence[Any]) -> list[dict[str, Any]]:
        unknown = [k for k in setting if k not in ("layer", "heads", "context", "mask_top_visual")]
        if unknown:
            raise KeyError(f"Unknown attention factor(s) {unknown}: use layer, heads, context, mask_top_visual.")
        ims, qs, _ = unpack_examples(dataset, labels=False)
        labels = [_label(it, i) for i, it in enumerate(dataset)]  # checked before the model runs
        if setting.get("context"):
            if contexts is not None:
                cache["ctx"] = list(contexts)
            if "ctx" not in cache:
                from moras_interp.organisms.analysis import visual_contexts

                cache["ctx"] = visual_contexts(model, ims, batch_size=batch_size)
            qs = [reformulate(c, q) for c, q in zip(cache["ctx"], qs)]
        layer, heads = setting.get("layer", "all"), setting.get("heads", "all")
        edits = [MaskTopImageTokens(fraction=float(setting["mask_top_visual"]))] \
            if setting.get("mask_top_visual") else []
        rows: list[dict[str, Any]] = []
        for i in range(0, len(qs), batch_size):
            batch = model.prepare(ims[i : i + batch_size], qs[i : i + batch_size])
            with attention_edits(model, edits, layouts=batch.layouts) if edits else nullcontext():
                att = cross_modal_attention(model, batch, query="last",
                                            layers=None if layer == "all" else [int(layer)])
            hs: Any = heads
            if isinstance(heads, float):
                hs = att.head_set(threshold=heads) or "all"
            for j in range(len(batch.layouts)):
                box = getattr(dataset[i + j], "box", None) or getattr(dataset[i + j], "region", None)
                if box is None:
                    raise ValueError(f"Example {i + j} has no box/region: the attention evaluator needs one.")
                rs = att.region_share(j, box=tuple(box), heads=hs)
                rows.append({"label": labels[i + j], "share": rs.aggregated, "ratio": rs.ratio,
                             "image_mass": float(att.image_mass(j).mean())})
        return rows

    evaluate.identity = {  # type: ignore[attr-defined]  # what run_grid's cache is keyed on
        "evaluator": "attention", "model": model_fingerprint(model), "processor": processor_fingerprint(model.processor),
        "contexts": None if contexts is None else sha256_json(list(contexts))}
    return evaluate


def fdr_rows(acts_a: torch.Tensor, acts_b: torch.Tensor, **setting: Any) -> list[dict[str, Any]]:
    """Tidy rows (one per layer) of FDR between two activation sets [L, n, d], tagged with ``setting``."""
    from moras_interp.activations.separability import fdr_per_layer

    return [{**setting, "layer": l, "fdr": float(v)} for l, v in enumerate(fdr_per_layer(acts_a, acts_b))]
