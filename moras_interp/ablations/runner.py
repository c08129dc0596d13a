"""A grid runner over named factors → a tidy pandas table, cached per setting and resumable.

    grid = {"n_tokens": [1, 3], "gamma": [0.0, 0.3], "fixed_r": [None, 0.5]}
    df = run_grid(grid, moras_evaluator(model, prototype, calibration), dataset, out="runs/ablate")

Each setting (one combination of factor values) is evaluated on the whole dataset by the evaluator,
which returns one row (a dict of metrics) per example. Finished settings are written atomically to
``out/settings/<key>.json``; a rerun skips them, so an interrupted grid resumes without losing work.

The cache is tied to the run identity (``out/identity.json``): the evaluator's identity (its ``identity``
attribute — the standard evaluators record model fingerprint, prototype and calibration content, judge and
options — or, for a plain function, its module, name and source code) and the dataset's content
(:func:`moras_interp.identity.data_fingerprint`). Another evaluator or dataset, even of the same length, is
refused with a per-field diff (``overwrite=True`` discards the cache). One writer per ``out`` (folder lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from moras_interp import distributed
from moras_interp.atomic import atomic_write_text, folder_lock
from moras_interp.callable_identity import callable_identity
from moras_interp.identity import (
    IdentityMismatchError,
    RunIdentity,
    check_or_write,
    data_fingerprint,
    sha256_json,
)
from moras_interp.progress import tqdm
from moras_interp.readers import ReadError, read_json

Setting = dict[str, Any]
Evaluator = Callable[[Setting, Sequence[Any]], list[dict[str, Any]]]


def settings_of(factors: dict[str, Sequence[Any]]) -> list[Setting]:
    """All combinations of factor values (cartesian product), in a stable order."""
    if not factors:
        return [{}]
    for k, v in factors.items():
        if len(v) == 0:
            raise ValueError(f"Factor {k!r} has no values.")
    names = list(factors)
    return [dict(zip(names, combo)) for combo in itertools.product(*(factors[n] for n in names))]


def setting_key(setting: Setting) -> str:
    """A short stable id of a setting (sha1 of its sorted JSON)."""
    blob = json.dumps(setting, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write a cache file sealed with the sha256 of its (JSON-normalised) content."""
    obj = json.loads(json.dumps(obj, default=str))
    atomic_write_text(path, json.dumps(obj | {"sha256": sha256_json(obj)}))


def _check_seal(path: Path, cached: dict[str, Any]) -> None:
    if cached.get("sha256") != sha256_json({k: v for k, v in cached.items() if k != "sha256"}):
        raise ReadError(f"{path} does not match its checksum: the cached rows were edited after the run wrote "
                        "them. Delete the file to recompute that setting, or pass overwrite=True.")


def evaluator_identity(evaluate: Callable[..., Any]) -> dict[str, Any]:
    """What an evaluator's rows depend on: its ``identity`` attribute (the standard evaluators set one), else
    its code and the values it holds (closure cells, defaults, partial arguments, an object's attributes;
    :func:`moras_interp.callable_identity.callable_identity`): two closures of one factory that capture other
    values are other evaluators."""
    return callable_identity(evaluate)


def dataset_identity(dataset: Sequence[Any]) -> str:
    """sha256 of the dataset's content (:func:`~moras_interp.identity.data_fingerprint`; plain JSON values
    such as numbers are hashed as JSON)."""
    try:
        return data_fingerprint(dataset)
    except (TypeError, ValueError):
        return sha256_json(list(dataset))


def run_grid(factors: dict[str, Sequence[Any]], evaluate: Evaluator, dataset: Sequence[Any], *,
             out: str | Path | None = None, progress: bool = True, overwrite: bool = False) -> pd.DataFrame:
    """Evaluate every setting on ``dataset``; returns one row per (example, setting).

    Columns: the factor names, ``setting`` (key), ``example`` (index) and the evaluator's metrics.
    With ``out``, each finished setting is cached and reused on the next call (resume) when the evaluator
    and dataset are the same (see the module docstring); ``overwrite=True`` discards the cache first.
    """
    if len(dataset) == 0:
        raise ValueError("run_grid got an empty dataset.")
    if out is None:
        return _run(factors, evaluate, dataset, None, "", progress)
    ident = RunIdentity("ablation", data=dataset_identity(dataset), extra={"evaluator": evaluator_identity(evaluate)})
    if distributed.info().enabled:  # torchrun / accelerate launch: the ranks share the settings
        return _run_distributed(factors, evaluate, dataset, Path(out), ident, progress, overwrite)
    with folder_lock(out):
        check_or_write(out, ident, overwrite, artefacts=("settings", "results.csv"))
        return _run(factors, evaluate, dataset, Path(out), ident.fingerprint(), progress)


def _run_distributed(factors: dict[str, Sequence[Any]], evaluate: Evaluator, dataset: Sequence[Any], out: Path,
                     ident: RunIdentity, progress: bool, overwrite: bool) -> pd.DataFrame:
    """Rank 0 checks the folder; pending setting i is evaluated (and cached) by rank i % K
    (:data:`moras_interp.distributed.SHARDING`); then every rank reads the table from the cache, rank 0 writes
    ``results.csv``. A killed rank loses at most the setting it was evaluating."""
    from moras_interp.moras.evaluate import check_or_write_readonly

    d = distributed.info()
    fp = ident.fingerprint()
    with contextlib.ExitStack() as locks:
        def setup_main() -> None:
            if d.is_main:
                locks.enter_context(folder_lock(out))
                check_or_write(out, ident, overwrite, artefacts=("settings", "results.csv"))
                (out / "settings").mkdir(parents=True, exist_ok=True)

        def setup_rank() -> list[Setting]:  # read before the barrier: no rank writes until all have read
            if not d.is_main:
                check_or_write_readonly(out, ident)
            locks.enter_context(folder_lock(distributed.rank_dir(out, d.rank)))
            return [s for s in settings_of(factors) if _cached(out / "settings", s, dataset, fp) is None]

        distributed.agree(setup_main, "run_grid: rank 0 checks the folder")
        todo = distributed.agree(setup_rank, "run_grid: ranks check the identity and read the cache") or []
        distributed.agree(lambda: _run({}, evaluate, dataset, out, fp, progress and d.is_main, settings=d.mine(todo),
                                       write=False), "run_grid: ranks evaluate their settings")
    distributed.agree(None, "run_grid: ranks release their folders")
    if d.is_main:
        shutil.rmtree(out / distributed.RANKS_DIR, ignore_errors=True)
    return _run(factors, evaluate, dataset, out, fp, False, write=d.is_main)


def _cached(cache_dir: Path, setting: Setting, dataset: Sequence[Any], fingerprint: str) -> list[Any] | None:
    """The cached rows of ``setting`` (None when not cached); raises on a cache file of another run."""
    path = cache_dir / f"{setting_key(setting)}.json"
    if not path.exists():
        return None
    cached = read_json(path, what="an ablation cache file")
    _check_seal(path, cached)
    if cached.get("identity") != fingerprint or not isinstance(cached.get("rows"), list):
        raise IdentityMismatchError(f"{path} was written by another run (identity "
                                    f"{str(cached.get('identity'))[:12]}…, this run {fingerprint[:12]}…): "
                                    "pass overwrite=True or use another folder.")
    if cached.get("setting") == json.loads(json.dumps(setting, default=str)) and \
            cached.get("n") == len(dataset) == len(cached["rows"]):
        return cached["rows"]
    return None


def _run(factors: dict[str, Sequence[Any]], evaluate: Evaluator, dataset: Sequence[Any], out: Path | None,
         fingerprint: str, progress: bool, *, settings: list[Setting] | None = None, write: bool = True
         ) -> pd.DataFrame:
    cache_dir = None
    if out is not None:
        cache_dir = out / "settings"
        cache_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for setting in tqdm(settings_of(factors) if settings is None else settings, desc="ablation grid",
                        disable=not progress):
        key = setting_key(setting)
        path = cache_dir / f"{key}.json" if cache_dir is not None else None
        if cache_dir is not None:
            hit = _cached(cache_dir, setting, dataset, fingerprint)
            if hit is not None:
                rows += hit
                continue
        res = evaluate(setting, dataset)
        if len(res) != len(dataset):
            raise RuntimeError(f"The evaluator returned {len(res)} rows for {len(dataset)} examples.")
        srows = [{**setting, "setting": key, "example": i, **r} for i, r in enumerate(res)]
        if path is not None:
            _write_json_atomic(path, {"setting": setting, "n": len(dataset), "identity": fingerprint, "rows": srows})
        rows += json.loads(json.dumps(srows, default=str)) if path is not None else srows
    df = pd.DataFrame(rows)
    if out is not None and write:
        atomic_write_text(out / "results.csv", df.to_csv(index=False))
    return df


def _label(v: Any) -> str:
    """Axis label of a factor value: None/NaN → "None", integral floats without ".0" (pandas upcasts ints)."""
    if v is None or (isinstance(v, float) and v != v):
        return "None"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _n_label(df: pd.DataFrame) -> str:
    """How many examples stand behind each point: ``"12 per setting"`` (or ``"3–5 per setting"``)."""
    sizes = df.groupby("setting").size() if "setting" in df.columns else pd.Series([len(df)])
    lo, hi = int(sizes.min()), int(sizes.max())
    return f"{lo} per setting" if lo == hi else f"{lo}–{hi} per setting"


def metric_vs_factor(df: pd.DataFrame, factor: str, metric: str, *, color: str | None = None, title: str = "") -> Any:
    """Plotly line/marker figure of the mean metric per factor value (one line per ``color`` value).

    The factor axis is categorical (one tick per setting, None included); the title names the n."""
    import plotly.graph_objects as go

    from moras_interp.viz.style import style_chart

    fig = go.Figure()
    groups = [(None, df)] if color is None else list(df.groupby(color, dropna=False))
    order = [_label(v) for v in pd.unique(df[factor])]
    for i, (name, g) in enumerate(groups):
        agg = g.groupby(factor, dropna=False)[metric].agg(["mean", "size"]).reset_index()
        agg = agg.assign(_x=agg[factor].map(_label)).set_index("_x").reindex([o for o in order if o in set(
            agg[factor].map(_label))]).reset_index()
        # a symbol and dash per line, so lines that coincide stay visible (outlined markers over filled ones)
        fig.add_scatter(x=list(agg["_x"]), y=agg["mean"], mode="lines+markers",
                        marker={"symbol": ["circle", "square-open", "diamond-open", "x"][i % 4], "size": 9 + 3 * (i % 4)},
                        line={"dash": ["solid", "dash", "dot", "dashdot"][i % 4]},
                        name=f"{color} = {_label(name)}" if color else metric, customdata=agg["size"],
                        hovertemplate="%{x}: %{y:.3g} (n = %{customdata})<extra></extra>")
    style_chart(fig, title=title or f"{metric} vs {factor}", x_title=factor, y_title=f"mean {metric}",
                n=len(df), x_kind="category")
    fig.update_xaxes(categoryorder="array", categoryarray=order)
    return fig


def two_factor_heatmap(df: pd.DataFrame, x: str, y: str, metric: str, *, title: str = "") -> Any:
    """Plotly heatmap of the mean metric over two factors: categorical axes (None is a category), the value
    written in each cell, a note when every cell holds the same value."""
    import numpy as np
    import plotly.graph_objects as go

    from moras_interp.viz.style import SEQUENTIAL, constant_note, degenerate_range, style_chart

    keyed = df.assign(**{x: df[x].map(_label), y: df[y].map(_label)})
    piv = keyed.pivot_table(index=y, columns=x, values=metric, aggfunc="mean", dropna=False)
    piv = piv.reindex(index=list(dict.fromkeys(keyed[y])), columns=list(dict.fromkeys(keyed[x])))
    z = piv.to_numpy(dtype=float)
    fin = z[np.isfinite(z)]
    lo, hi = degenerate_range(float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
    fig = go.Figure(go.Heatmap(z=z, x=list(piv.columns), y=list(piv.index), colorscale=SEQUENTIAL,
                               zmin=lo, zmax=hi, texttemplate="%{z:~.3g}", colorbar={"title": {"text": f"mean {metric}", "side": "right"}},
                               hovertemplate=f"{x}=%{{x}}, {y}=%{{y}}: %{{z:.3g}}<extra></extra>"))
    note = constant_note(z)
    text = (title or f"{metric} over {x} × {y}") + (f"<br>{note}" if note else "")
    style_chart(fig, title=text, x_title=x, y_title=y, n=_n_label(df), x_kind="category", y_kind="category",
                width=max(560, 120 * z.shape[1] + 260), height=max(380, 90 * z.shape[0] + 200))
    return fig
