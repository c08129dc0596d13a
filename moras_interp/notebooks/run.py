"""Run the project's notebooks headless with parameters (papermill convention, via nbclient).

Each notebook in ``notebooks/`` is a jupytext pair: ``NN_name.py`` (percent format, the reviewed source) and
``NN_name.ipynb`` (what Jupyter opens); ``jupytext --sync notebooks/*.py`` brings them back in step. The first
code cell is tagged ``parameters`` (model id or path, device, dtype, data, output folder). :func:`execute`
inserts a cell with overrides right after it, runs every cell and raises :class:`NotebookError` naming the
failing cell. ``python -m moras_interp.notebooks [--figures DIR]`` runs them all (this is how ``figures/`` is
regenerated). What the notebooks share at the start (model, folders, export, data) is
:func:`moras_interp.notebooks.session.setup`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NOTEBOOKS = ("01_attention_misses_visual_risk", "02_contrastive_directions", "03_moras_pipeline", "04_ablations")
REPO = Path(__file__).resolve().parent.parent.parent


class NotebookError(RuntimeError):
    """A notebook cell raised; the message names the notebook, the cell index and its source."""


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

    ``save_to``: write the executed notebook there (papermill keeps the injected-parameters cell; saved over
    ``path`` itself it is dropped, so the notebook's source stays that of its jupytext ``.py`` twin).
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
            if Path(save_to).resolve() == path:  # in place: keep the jupytext pair equal (no injected cell)
                nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
            atomic_write_text(save_to, nbformat.writes(nb))
    return nb


def main(argv: list[str] | None = None) -> int:
    """Run every notebook (or those named) on a shipped organism, writing figures to ``--figures``."""
    ap = argparse.ArgumentParser(prog="python -m moras_interp.notebooks", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(NOTEBOOKS))
    ap.add_argument("--figures", default=str(REPO / "figures"), help="where the notebooks write their figures")
    ap.add_argument("--plotlyjs", default="directory", choices=["standalone", "cdn", "directory"],
                    help="how the HTML figures get plotly.js (default: one plotly.min.js beside them)")
    ap.add_argument("--organism", default=None, help="the notebooks' ORGANISM parameter (default: each notebook's own: toy-llava for 01-02, toy-llava-2 for 03-04)")
    ap.add_argument("--save-executed", action="store_true", help="write the executed notebooks back in place")
    a = ap.parse_args(argv)
    a.plotlyjs = True if a.plotlyjs == "standalone" else a.plotlyjs
    for name in a.names:
        path = REPO / "notebooks" / f"{name}.ipynb"
        print(f"running {path.name} …", flush=True)
        # the repository's figures/ share one plotly.min.js (a standalone copy per HTML would add ~4.5 MB each)
        params = {"FIGURES": str(Path(a.figures).resolve()), "PLOTLYJS": a.plotlyjs}
        execute(path, params | ({"ORGANISM": a.organism} if a.organism else {}),
                save_to=path if a.save_executed else None)
    print(f"figures in {a.figures}")
    return 0
