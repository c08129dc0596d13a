"""Run the project's notebooks headless with parameters (papermill convention, via nbclient).

Each notebook in ``notebooks/`` is a jupytext pair: ``NN_name.py`` (percent format, the reviewed source) and
``NN_name.ipynb`` (what Jupyter opens); ``jupytext --sync notebooks/*.py`` brings them back in step. The first
code cell is tagged ``parameters`` (model id or path, device, dtype, data, output folder). :func:`execute`
inserts a cell with overrides right after it, runs every cell and raises :class:`NotebookError` naming the
failing cell. ``python -m moras_interp.notebooks [--figures DIR]`` runs them all (this is how ``figures/`` is
regenerated). Inside a notebook, :func:`relative_to_notebook` resolves a relative output folder against the
notebook's own folder, whatever the kernel's working directory.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NOTEBOOKS = ("01_attention_misses_visual_risk", "02_contrastive_directions", "03_moras_pipeline", "04_ablations")
REPO = Path(__file__).resolve().parent.parent


class NotebookError(RuntimeError):
    """A notebook cell raised; the message names the notebook, the cell index and its source."""


def notebook_dir() -> Path:
    """Folder of the running notebook.

    Read from ``JPY_SESSION_NAME`` (set by Jupyter server and by :func:`execute` for the kernel it starts),
    then VS Code's ``__vsc_ipynb_file__``; otherwise the working directory (where Jupyter starts kernels).
    """
    session = os.environ.get("JPY_SESSION_NAME")
    if session and Path(session).is_absolute():
        return Path(session).parent
    try:
        from IPython import get_ipython

        vsc = (get_ipython().user_ns if get_ipython() is not None else {}).get("__vsc_ipynb_file__")
    except ImportError:
        vsc = None
    return Path(vsc).parent if vsc else Path.cwd()


def relative_to_notebook(path: str | Path) -> Path:
    """``path`` made absolute: a relative path is taken relative to the running notebook's folder."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() else notebook_dir() / p).resolve()


def read_notebook(path: str | Path) -> Any:
    """An ``.ipynb`` (nbformat) or a jupytext percent-format ``.py`` notebook, as an nbformat node."""
    path = Path(path)
    if path.suffix == ".py":
        try:
            import jupytext
        except ImportError as e:
            raise NotebookError(f"{path} is a jupytext notebook; `pip install jupytext` to read it, "
                                f"or run its paired {path.with_suffix('.ipynb').name}.") from e
        return jupytext.read(path)
    import nbformat

    return nbformat.read(path, as_version=4)


def execute(path: str | Path, parameters: Mapping[str, Any] | None = None, *, timeout: int = 900,
            cwd: str | Path | None = None, save_to: str | Path | None = None) -> Any:
    """Execute a notebook with ``parameters`` overriding its ``parameters`` cell; returns the executed notebook.

    The kernel starts in ``cwd`` (default: the notebook's folder) and knows the notebook's path
    (``JPY_SESSION_NAME``), so relative output folders resolve against the notebook either way.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from moras_interp.atomic import atomic_write_text

    path = Path(path).resolve()
    nb = read_notebook(path)
    if parameters:
        idx = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
        if idx is None:
            raise NotebookError(f"{path.name} has no cell tagged 'parameters' to override.")
        src = "# injected parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
        cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(idx + 1, cell)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    try:
        client.execute(env={**os.environ, "JPY_SESSION_NAME": str(path)})
    except CellExecutionError as e:
        raise NotebookError(f"{path.name} failed: {str(e)[:4000]}") from e
    finally:
        if save_to is not None:
            atomic_write_text(save_to, nbformat.writes(nb))
    return nb


def main(argv: list[str] | None = None) -> int:
    """Run every notebook (or those named) on the shipped organism, writing figures to ``--figures``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(NOTEBOOKS))
    ap.add_argument("--figures", default=str(REPO / "figures"), help="where the notebooks write their figures")
    ap.add_argument("--save-executed", action="store_true", help="write the executed notebooks back in place")
    a = ap.parse_args(argv)
    for name in a.names:
        path = REPO / "notebooks" / f"{name}.ipynb"
        print(f"running {path.name} …", flush=True)
        execute(path, {"FIGURES": str(Path(a.figures).resolve())}, save_to=path if a.save_executed else None)
    print(f"figures in {a.figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
