"""Measurements behind the honest model-card sections, with n and 95 % intervals on every number.

* :func:`moras_study` — MoRAS, ECSO, AdaShield-S and no defence on the same held-out queries (refusal rates
  with Wilson intervals), MoRAS/ECSO verdict agreement with a paired bootstrap of their difference, and the
  fixed-r sweep (ASR / over-refusal per r; how many distinct operating points it has);
* :func:`attention_controls` — the attention rise on the hazard's box with the model's own context, next to
  two controls: a benign named object's box, and a random box of the same size in an empty cell of the hazard
  scene; per-example rises with bootstrap intervals, so the card can say whether the rise is risk-specific;
* :func:`separability_cv` — in-sample FDR next to held-out (cross-validated) FDR / AUROC and a shuffled-label
  baseline, per layer, plain vs reformulated.

Items are :class:`~moras_interp.organisms.tasks.Query` objects (image, question, label, box, scene).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from moras_interp.activations.separability import fdr_per_layer
from moras_interp.eval.judge import KeywordJudge
from moras_interp.eval.stats import Rate, cv_separability, paired_bootstrap_diff, rate_of, shuffled_baseline
from moras_interp.moras.baselines import FixedSteering
from moras_interp.moras.methods import MoRASSetup, build_methods
from moras_interp.moras.prompts import CONTEXT_PROMPT, reformulate
from moras_interp.organisms import analysis
from moras_interp.organisms.world import CELL, GRID

R_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def _refused(method: Any, qs: Sequence[Any], max_new_tokens: int, batch_size: int) -> tuple[np.ndarray, list[Any]]:
    tr = method.run([q.image for q in qs], [q.question for q in qs], max_new_tokens=max_new_tokens,
                    batch_size=batch_size, progress=False)
    return np.asarray(KeywordJudge()([t.answer for t in tr]), dtype=bool), tr


def moras_study(model: Any, unsafe: Sequence[Any], safe: Sequence[Any], setup: MoRASSetup, *,
                methods: Sequence[str] = ("none", "moras", "ecso", "adashield"), r_grid: Sequence[float] = R_GRID,
                sweep_n: int | None = None, max_new_tokens: int = 16, batch_size: int = 50,
                ecso_caption_prompt: str = CONTEXT_PROMPT) -> dict[str, Any]:
    """Refusal outcomes per method and the fixed-r sweep on the same queries.

    Returns {"methods": {name: {"asr": Rate, "over_refusal": Rate, "refused_unsafe": bool[n_u], "refused_safe":
    bool[n_s]}}, "moras_risk": [n_u + n_s] applied r, "agreement": Rate (MoRAS and ECSO verdicts equal, all
    queries), "diff_unsafe" / "diff_safe": Diff (MoRAS − ECSO refusal rate), "sweep": [(r, asr Rate,
    over-refusal Rate)] on the first ``sweep_n`` queries of each class, "distinct_points": int}.
    """
    objs = build_methods(model, list(methods), setup, ecso_caption_prompt=ecso_caption_prompt)
    out: dict[str, Any] = {"methods": {}}
    for name, m in objs.items():
        ru, tu = _refused(m, unsafe, max_new_tokens, batch_size)
        rs, ts = _refused(m, safe, max_new_tokens, batch_size)
        out["methods"][name] = {"asr": rate_of(~ru), "over_refusal": rate_of(rs), "refused_unsafe": ru,
                                "refused_safe": rs}
        if name == "moras":
            out["moras_risk"] = [float(t.risk) for t in tu + ts]
    if "moras" in objs and "ecso" in objs:
        a, b = out["methods"]["moras"], out["methods"]["ecso"]
        ma, mb = np.concatenate([a["refused_unsafe"], a["refused_safe"]]), np.concatenate([b["refused_unsafe"], b["refused_safe"]])
        out["agreement"] = rate_of(ma == mb)
        out["diff_unsafe"] = paired_bootstrap_diff(a["refused_unsafe"], b["refused_unsafe"])
        out["diff_safe"] = paired_bootstrap_diff(a["refused_safe"], b["refused_safe"])
    k = sweep_n or max(len(unsafe), len(safe))
    sweep = []
    for r in r_grid:
        fs = FixedSteering(model, setup.prototype, float(r))
        ru, _ = _refused(fs, unsafe[:k], max_new_tokens, batch_size)
        rs, _ = _refused(fs, safe[:k], max_new_tokens, batch_size)
        sweep.append((float(r), rate_of(~ru), rate_of(rs)))
    out["sweep"] = sweep
    out["distinct_points"] = len({(a.k, o.k) for _, a, o in sweep})
    return out


def random_box_queries(qs: Sequence[Any], seed: int = 0) -> list[Any]:
    """Each query with its box moved to a random empty cell of its scene (same width and height)."""
    rng = np.random.default_rng(seed)
    out = []
    for q in qs:
        x0, y0, x1, y1 = q.box
        w, h = x1 - x0, y1 - y0
        taken = {o.cell for o in q.scene.objects}
        free = [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in taken]
        r, c = free[int(rng.integers(len(free)))]
        dx, dy = int(rng.integers(0, CELL - w + 1)), int(rng.integers(0, CELL - h + 1))
        out.append(dataclasses.replace(q, box=(c * CELL + dx, r * CELL + dy, c * CELL + dx + w, r * CELL + dy + h)))
    return out


def _boot_mean(x: np.ndarray, seed: int = 0, n_boot: int = 4000) -> tuple[float, float, float]:
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    b = x[idx].mean(1)
    return float(x.mean()), float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))


def _rise(df: Any, layer: Any) -> tuple[np.ndarray, np.ndarray]:
    d = df[df["layer"].astype(str) == str(layer)].pivot(index="example", columns="condition", values="ratio")
    return d["plain"].to_numpy(), d["reformulated"].to_numpy()


def attention_controls(model: Any, hazard: Sequence[Any], benign: Sequence[Any], *, seed: int = 0,
                       batch_size: int = 20) -> dict[str, Any]:
    """H_n and per-layer ratio (share on the box / the box's area share), plain vs with the model's own context,
    for the hazard's box, a random same-size box in the hazard scenes, and a benign object's box.

    Returns {"rows": {group: {layer: {"plain": (mean, lo, hi), "context": (...), "rise": (...)}}},
    "diff_vs_benign" / "diff_vs_random": (mean, lo, hi) of the H_n rise difference (bootstrap, independent
    groups for benign, paired for the random box), "n": per group}.
    """
    ctx_h = analysis.visual_contexts(model, [q.image for q in hazard], batch_size=batch_size)
    ctx_b = analysis.visual_contexts(model, [q.image for q in benign], batch_size=batch_size)
    dfs = {"hazard box": analysis.attention_study(model, hazard, contexts=ctx_h, batch_size=batch_size),
           "random box (hazard scenes)": analysis.attention_study(model, random_box_queries(hazard, seed),
                                                                  contexts=ctx_h, batch_size=batch_size),
           "benign object box": analysis.attention_study(model, benign, contexts=ctx_b, batch_size=batch_size)}
    rows: dict[str, dict[Any, dict[str, tuple[float, float, float]]]] = {}
    rises: dict[str, np.ndarray] = {}
    for g, df in dfs.items():
        rows[g] = {}
        for layer in dict.fromkeys(df["layer"].tolist()):
            p, c = _rise(df, layer)
            rows[g][layer] = {"plain": _boot_mean(p, seed), "context": _boot_mean(c, seed), "rise": _boot_mean(c - p, seed)}
            if str(layer) == "H_n":
                rises[g] = c - p
    out: dict[str, Any] = {"rows": rows, "n": {g: len(q) for g, q in (("hazard box", hazard), ("benign object box", benign))}}
    if {"hazard box", "benign object box"} <= set(rises):
        rng = np.random.default_rng(seed)
        a, b = rises["hazard box"], rises["benign object box"]
        boots = a[rng.integers(0, a.size, (4000, a.size))].mean(1) - b[rng.integers(0, b.size, (4000, b.size))].mean(1)
        out["diff_vs_benign"] = (float(a.mean() - b.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)))
    if {"hazard box", "random box (hazard scenes)"} <= set(rises):
        out["diff_vs_random"] = _boot_mean(rises["hazard box"] - rises["random box (hazard scenes)"], seed)
    return out


def separability_cv(model: Any, qs: Sequence[Any], *, contexts: Sequence[str] | None = None, folds: int = 5,
                    n_shuffles: int = 20, seed: int = 0, batch_size: int = 25) -> list[dict[str, Any]]:
    """Per (condition, layer): in-sample FDR, held-out FDR and AUROC (``folds``-fold CV of a Fisher direction),
    and the shuffled-label baseline (mean and 95th percentile over ``n_shuffles`` permutations, p-value)."""
    y = np.asarray([q.label == "unsafe" for q in qs])
    images = [q.image for q in qs]
    if contexts is None:
        contexts = analysis.visual_contexts(model, images, prompt=CONTEXT_PROMPT, batch_size=batch_size)
    conds = {"plain": [q.question for q in qs], "reformulated": [reformulate(c, q.question) for c, q in zip(contexts, qs)]}
    rows = []
    for cond, prompts in conds.items():
        x = analysis.last_token_states(model, images, prompts, batch_size=batch_size)  # [n, L, d]
        ins = fdr_per_layer(x[y].transpose(0, 1), x[~y].transpose(0, 1))
        for layer in range(x.shape[1]):
            cv = cv_separability(x[:, layer].numpy(), y, folds=folds, seed=seed)
            sh = shuffled_baseline(x[:, layer].numpy(), y, n_shuffles=n_shuffles, folds=folds, seed=seed, observed=cv)
            rows.append({"condition": cond, "layer": layer, "fdr_in_sample": float(ins[layer]), "cv": cv, "shuffled": sh})
    return rows


def fmt_ci(m: tuple[float, float, float], digits: int = 2) -> str:
    """``"1.86 [1.50, 2.20]"`` from (mean, lo, hi)."""
    return f"{m[0]:.{digits}f} [{m[1]:.{digits}f}, {m[2]:.{digits}f}]"


def pooled(rates: Sequence[Rate]) -> Rate:
    """Several Rates over disjoint examples as one."""
    return Rate(sum(r.k for r in rates), sum(r.n for r in rates))


__all__ = ["R_GRID", "attention_controls", "fmt_ci", "moras_study", "pooled", "random_box_queries", "separability_cv"]
