"""Exports: standalone HTML, PNG with or without a browser, and pickle-free NPZ + JSON sidecar.

Every writer is atomic: it writes a temporary file next to the target and ``os.replace``-s it, so a
crash never leaves a half-written figure or array file behind.

PNG: ``save_png`` uses kaleido (``fig.to_image``) only when a Chrome/Chromium is installed (a cheap
PATH / ``BROWSER_PATH`` / choreographer-download lookup, no browser start), and otherwise — or when
kaleido fails — renders the SAME plotly figure with matplotlib's Agg backend via
:func:`moras_interp.viz.mpl.figure_to_matplotlib`. There is no second figure description to keep in
sync: the plotly figure is the spec.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import plotly.graph_objects as go
import torch

from moras_interp.atomic import atomic_write
from moras_interp.viz.mpl import figure_to_matplotlib

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def _as_figure(fig: go.Figure | dict) -> go.Figure:
    return fig if isinstance(fig, go.Figure) else go.Figure(fig)


def save_html(fig: go.Figure | dict, path: PathLike, *, include_plotlyjs: bool | str = True) -> Path:
    """Write a standalone HTML file; ``include_plotlyjs=True`` inlines plotly.js (works offline),
    ``"cdn"`` links it (small file, needs internet), ``"directory"`` links a ``plotly.min.js`` written once
    next to the file (small files that work offline: for folders of many figures). Returns the path."""
    html = _as_figure(fig).to_html(full_html=True, include_plotlyjs=include_plotlyjs)
    if include_plotlyjs == "directory":
        js = Path(path).parent / "plotly.min.js"
        if not js.exists():
            from plotly.offline import get_plotlyjs

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(js, lambda fh: fh.write(get_plotlyjs().encode("utf-8")))
    return atomic_write(path, lambda fh: fh.write(html.encode("utf-8")))


def kaleido_available() -> bool:
    """Whether kaleido can render: kaleido is importable and a Chrome/Chromium binary is found."""
    try:
        import kaleido  # noqa: F401
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return False
    try:
        return Chromium.find_browser(skip_local=False) is not None
    except Exception:
        return False


def save_png(
    fig: go.Figure | dict,
    path: PathLike,
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = 1.0,
    engine: str = "auto",
) -> Path:
    """Write the figure as a PNG of ``round(width*scale) x round(height*scale)`` pixels.

    Args:
        fig: a plotly figure (or its dict form) — e.g. one built by :mod:`moras_interp.viz.figures`.
        width, height: layout pixels; default the figure's own ``layout.width/height``, else 900 x 600.
        scale: pixel-density multiplier (2 → twice the pixels, same layout).
        engine: ``"auto"`` (kaleido if a browser is available, matplotlib otherwise or on failure),
            ``"kaleido"`` (no fallback) or ``"matplotlib"``.
    """
    if engine not in ("auto", "kaleido", "matplotlib"):
        raise ValueError(f"engine must be 'auto', 'kaleido' or 'matplotlib', got {engine!r}")
    f = _as_figure(fig)
    w = int(width or f.layout.width or 900)
    h = int(height or f.layout.height or 600)
    if engine == "kaleido" or (engine == "auto" and kaleido_available()):
        try:
            png = f.to_image(format="png", width=w, height=h, scale=scale)
            return atomic_write(path, lambda fh: fh.write(png))
        except Exception as exc:
            if engine == "kaleido":
                raise
            log.warning("kaleido PNG export failed (%s); falling back to matplotlib", exc)
    mfig = figure_to_matplotlib(f, width=w, height=h, scale=scale)
    return atomic_write(path, lambda fh: mfig.savefig(fh, format="png", dpi=100 * scale))


def _to_numpy(name: str, a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        t = a.detach().cpu()
        a = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
    arr = np.asarray(a)
    if arr.dtype.hasobject:
        raise TypeError(f"array {name!r} has dtype {arr.dtype}, which would need pickling; refused")
    return arr


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return os.fspath(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"meta value of type {type(o).__name__} is not JSON-serialisable")


def _write_npz(fh: IO[bytes], data: Mapping[str, np.ndarray], compress: bool) -> None:
    """``np.savez`` equivalent that never pickles and accepts any array name."""
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(fh, mode="w", compression=mode, allowZip64=True) as zf:
        for name, arr in data.items():
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


def sidecar_path(path: PathLike) -> Path:
    """The JSON sidecar of an NPZ file: ``x.npz`` → ``x.json``; any other name gets ``.json`` appended
    (``run_r0.5`` → ``run_r0.5.json``: a name is never truncated at its last dot)."""
    p = Path(path)
    return p.with_name(p.name.removesuffix(".npz") + ".json")


def save_npz(
    path: PathLike,
    arrays: Mapping[str, np.ndarray | torch.Tensor],
    meta: Mapping[str, Any] | None = None,
    *,
    compress: bool = True,
) -> Path:
    """Save ``arrays`` to ``path`` (NPZ, never pickled) and ``meta`` to :func:`sidecar_path` of it.

    Object arrays are refused (``TypeError``); tensors are moved to CPU (bfloat16 → float32); meta must
    be JSON-serialisable (numpy scalars/arrays, tensors, paths and sets are converted). Both files are
    written atomically, the NPZ first. Returns the NPZ path.
    """
    data = {str(k): _to_numpy(str(k), v) for k, v in arrays.items()}
    text = json.dumps(dict(meta or {}), default=_json_default, indent=2, sort_keys=True)
    out = atomic_write(path, lambda fh: _write_npz(fh, data, compress))
    atomic_write(sidecar_path(path), lambda fh: fh.write(text.encode("utf-8")))
    return out


def load_npz(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load ``(arrays, meta)`` written by :func:`save_npz`; never unpickles (object arrays raise
    ``ValueError``). ``meta`` is ``{}`` when the sidecar is missing."""
    from moras_interp.readers import read_json, read_npz

    arrays = read_npz(path)
    side = sidecar_path(path)
    meta = read_json(side) if side.exists() else {}
    return arrays, meta
