"""The paper's two diagnoses, measured on any model with labelled image queries (the organism by default).

1. *Attention misses visual risk*: share of the last prompt token's image attention that lands on the
   risky object's box, divided by the box's area share (1.0 = no better than uniform), per layer and for
   the visual head set H_n (heads whose image-attention mass exceeds a threshold), for the plain question
   and for the question reformulated with the model's own visual context (MoRAS stage 1).
2. *Separability*: FDR per layer of last-token residual states, unsafe vs safe queries, plain vs
   reformulated.

Both return tidy pandas tables; :func:`attention_summary` / :func:`separability_summary` condense them for
the model card. Works with any :class:`~moras_interp.models.mllm.MLLM` and any items with ``image``,
``question``, ``label`` and ``box`` attributes (``organisms.tasks.Query`` or ``eval.datasets.Example``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from moras_interp.activations.separability import fdr_per_layer
from moras_interp.attention.trace import cross_modal_attention
from moras_interp.eval.labels import describe, safety_label
from moras_interp.moras.prompts import CONTEXT_PROMPT, reformulate
from moras_interp.progress import tqdm

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def _text(q: Any) -> str:
    return getattr(q, "question", None) or q.text


def visual_contexts(model: MLLM, images: Sequence[Any], *, prompt: str = CONTEXT_PROMPT, max_new_tokens: int = 40,
                    batch_size: int = 8, progress: bool = False) -> list[str]:
    """MoRAS stage 1: the model's own one-sentence visual context for each image (greedy, batched)."""
    out: list[str] = []
    for idx in tqdm(_chunks(len(images), batch_size), desc="visual context", disable=not progress):
        batch = model.prepare([images[i] for i in idx], [prompt] * len(idx))
        out += [t.strip() for t in model.generate(batch, max_new_tokens=max_new_tokens).texts]
    return out


def attention_study(model: MLLM, queries: Sequence[Any], *, contexts: Sequence[str] | None = None,
                    threshold: float = 0.2, batch_size: int = 8, progress: bool = False) -> pd.DataFrame:
    """Region share of last-token image attention on each query's box, plain vs reformulated.

    Args:
        queries: items with ``image``, ``question`` (or ``text``) and ``box`` (x0, y0, x1, y1) in original pixels.
        contexts: visual contexts to reformulate with; None = generate them with the model (stage 1).
        threshold: image-attention mass above which a head joins the visual head set H_n (per condition,
            averaged over queries).

    Returns:
        DataFrame with one row per (example, condition, layer) where layer is an int or "H_n"; columns
        ``share`` (fraction of image attention on the box), ``area_share``, ``ratio`` (= share / area_share),
        ``image_mass`` (mean over heads of the attention mass on image tokens).
    """
    qs = [q for q in queries if q.box is not None and q.image is not None]
    if not qs:
        raise ValueError("attention_study needs queries with an image and a region box.")
    if contexts is None:
        contexts = visual_contexts(model, [q.image for q in qs], batch_size=batch_size, progress=progress)
    conds = {"plain": [_text(q) for q in qs],
             "reformulated": [reformulate(c, _text(q)) for c, q in zip(contexts, qs)]}
    rows: list[dict[str, Any]] = []
    for cond, prompts in conds.items():
        results = []
        for idx in tqdm(_chunks(len(qs), batch_size), desc=f"attention ({cond})", disable=not progress):
            batch = model.prepare([qs[i].image for i in idx], [prompts[i] for i in idx])
            results.append((idx, cross_modal_attention(model, batch, query="last")))
        mass = torch.stack([a.image_mass(j) for _, a in results for j in range(len(a.layouts))]).mean(0)  # [L, H]
        heads = [(l, h) for l in results[0][1].layers for h in results[0][1].heads
                 if float(mass[results[0][1].layers.index(l), results[0][1].heads.index(h)]) > threshold]
        for idx, att in results:
            for j, i in enumerate(idx):
                rs = att.region_share(j, box=qs[i].box)
                m = att.image_mass(j)  # [L, H]
                for li, layer in enumerate(att.layers):
                    share = float(rs.per_head[li].mean())
                    rows.append({"example": i, "condition": cond, "layer": layer, "share": share,
                                 "area_share": rs.area_share, "ratio": share / rs.area_share,
                                 "image_mass": float(m[li].mean())})
                if heads:
                    hs = att.region_share(j, box=qs[i].box, heads=heads)
                    rows.append({"example": i, "condition": cond, "layer": "H_n", "share": hs.aggregated,
                                 "area_share": hs.area_share, "ratio": hs.ratio,
                                 "image_mass": float(torch.stack([m[att.layers.index(l), att.heads.index(h)]
                                                                  for l, h in heads]).mean()),
                                 "n_heads": len(heads)})
    return pd.DataFrame(rows)


def attention_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean share / ratio per layer (and H_n), plain vs reformulated, as a wide table."""
    g = df.groupby(["layer", "condition"], sort=False)[["share", "ratio", "image_mass"]].mean().unstack("condition")
    g.columns = [f"{m} ({c})" for m, c in g.columns]
    return g


def last_token_states(model: MLLM, images: Sequence[Any], prompts: Sequence[str], *, batch_size: int = 8,
                      progress: bool = False) -> torch.Tensor:
    """Residual stream after every decoder layer at the last prompt token: float64 [n, layers, d]."""
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.n_layers)]
    out = []
    for idx in tqdm(_chunks(len(prompts), batch_size), desc="states", disable=not progress):
        batch = model.prepare([images[i] for i in idx], [prompts[i] for i in idx])
        _, cache = model.run_with_cache(batch, names=names)
        out.append(torch.stack([cache[n][:, -1].double() for n in names], dim=1))
    return torch.cat(out)


def separability_study(model: MLLM, queries: Sequence[Any], *, contexts: Sequence[str] | None = None,
                       eps: float = 1e-3, batch_size: int = 8, progress: bool = False) -> pd.DataFrame:
    """FDR per layer of last-token states, unsafe vs safe queries, plain vs reformulated.

    Labels are read by the one label rule (:func:`moras_interp.eval.labels.safety_label`): ``"Unsafe "`` is
    unsafe, an unknown label is an error naming the query.

    Returns:
        DataFrame with columns ``condition``, ``layer``, ``fdr``.
    """
    labels = [safety_label(q, where=describe(q, i)) == "unsafe" for i, q in enumerate(queries)]
    if all(labels) or not any(labels):
        raise ValueError("separability_study needs both unsafe and safe queries.")
    images = [q.image for q in queries]
    if contexts is None:
        contexts = visual_contexts(model, images, batch_size=batch_size, progress=progress)
    conds = {"plain": [_text(q) for q in queries],
             "reformulated": [reformulate(c, _text(q)) for c, q in zip(contexts, queries)]}
    rows = []
    lab = torch.tensor(labels)
    for cond, prompts in conds.items():
        x = last_token_states(model, images, prompts, batch_size=batch_size, progress=progress)
        x = x.transpose(0, 1)  # [layers, n, d]
        fdr = fdr_per_layer(x[:, lab], x[:, ~lab], eps=eps)
        rows += [{"condition": cond, "layer": l, "fdr": float(v)} for l, v in enumerate(fdr)]
    return pd.DataFrame(rows)


def separability_summary(df: pd.DataFrame) -> pd.DataFrame:
    """FDR per layer as a wide table (columns plain / reformulated)."""
    return df.pivot(index="layer", columns="condition", values="fdr")
