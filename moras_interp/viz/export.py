"""Exports: standalone HTML, PNG with or without a browser, and pickle-free NPZ + JSON sidecar.

Every writer is atomic: it writes a temporary file next to the target and ``os.replace``-s it, so a
crash never leaves a half-written figure or array file behind.

PNG: ``save_png`` renders through plotly's own engine, kaleido, with a Chrome/Chromium (found on ``PATH``,
e.g. Debian's ``apt-get install chromium``, or named by the ``BROWSER_PATH`` environment variable that
kaleido's browser driver, choreographer, reads). One headless browser is started per process on first use
and reused (stopped at exit). Only when no browser exists does it fall back — with a logged warning — to
the documented matplotlib renderer :func:`moras_interp.viz.mpl.figure_to_matplotlib`, which draws the SAME
plotly figure (the figure is the single spec) for the trace types the project uses and refuses others.

HTML: standalone by default (plotly.js inlined once per file, works offline and when copied elsewhere);
``include_plotlyjs="cdn"`` or ``"directory"`` are explicit opt-ins.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import warnings
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


PLOTLYJS_OPTIONS = (True, "cdn", "directory")


def save_html(fig: go.Figure | dict, path: PathLike, *, include_plotlyjs: bool | str = True,
              auto_play: bool = False) -> Path:
    """Write an HTML file of the figure. Returns the path.

    ``include_plotlyjs=True`` (default) inlines plotly.js once: the file is standalone (offline, copyable).
    ``"cdn"`` links it from the plotly CDN (small file, needs internet); ``"directory"`` links a
    ``plotly.min.js`` written once next to the file (small files for a folder of many figures, which only
    render while that file sits beside them). Figures with frames (sliders) do not auto-play.
    """
    if include_plotlyjs not in PLOTLYJS_OPTIONS:
        raise ValueError(f"include_plotlyjs must be one of {PLOTLYJS_OPTIONS}, got {include_plotlyjs!r}")
    html = _as_figure(fig).to_html(full_html=True, include_plotlyjs=include_plotlyjs, auto_play=auto_play)
    if include_plotlyjs == "directory":
        js = Path(path).parent / "plotly.min.js"
        if not js.exists():
            from plotly.offline import get_plotlyjs

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(js, lambda fh: fh.write(get_plotlyjs().encode("utf-8")))
    return atomic_write(path, lambda fh: fh.write(html.encode("utf-8")))


def browser_path() -> str | None:
    """The Chrome/Chromium kaleido will use: ``BROWSER_PATH`` if set, else the first of chromium /
    chromium-browser / google-chrome on ``PATH``, else choreographer's own lookup; ``None`` if none."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if Path(env).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from choreographer.browsers.chromium import Chromium

        found = Chromium.find_browser(skip_local=False)
        return str(found) if found else None
    except Exception:
        return None


def kaleido_available() -> bool:
    """Whether kaleido can render: kaleido is importable and a Chrome/Chromium binary is found."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return browser_path() is not None


_SERVER: dict[str, bool] = {"started": False}


def _kaleido_png(fig: go.Figure, width: int, height: int, scale: float) -> bytes:
    """PNG bytes from kaleido, through one headless browser kept for the life of the process."""
    import kaleido

    path = browser_path()
    if path and not os.environ.get("BROWSER_PATH"):
        os.environ["BROWSER_PATH"] = path  # choreographer's lookup, made explicit
    if not _SERVER["started"]:
        kaleido.start_sync_server(silence_warnings=True)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
        _SERVER["started"] = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        return fig.to_image(format="png", width=width, height=height, scale=scale)


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
        engine: ``"auto"`` (kaleido when a browser is available, else the matplotlib fallback with a
            warning), ``"kaleido"`` (an error without a browser) or ``"matplotlib"``.
    """
    if engine not in ("auto", "kaleido", "matplotlib"):
        raise ValueError(f"engine must be 'auto', 'kaleido' or 'matplotlib', got {engine!r}")
    f = _as_figure(fig)
    w = int(width or f.layout.width or 900)
    h = int(height or f.layout.height or 600)
    if engine == "kaleido" and not kaleido_available():
        raise RuntimeError("engine='kaleido' needs `pip install kaleido` and a Chrome/Chromium: "
                           "`apt-get install chromium`, or set BROWSER_PATH to a Chrome binary.")
    if engine == "kaleido" or (engine == "auto" and kaleido_available()):
        png = _kaleido_png(f, w, h, scale)
        return atomic_write(path, lambda fh: fh.write(png))
    if engine == "auto" and not _SERVER.get("warned"):
        log.warning("no Chrome/Chromium for kaleido: PNGs use the matplotlib fallback renderer "
                    "(install one with `apt-get install chromium` or set BROWSER_PATH)")
        _SERVER["warned"] = True
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
