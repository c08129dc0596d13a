"""Notebooks: the jupytext pairs agree, the parameters cell is papermill-clean, and every notebook executes
headless on the shipped organism from another working directory, writing where its parameter says."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from moras_interp.notebooks import NOTEBOOKS, REPO, execute, read_notebook

FAST = {"01_attention_misses_visual_risk": {"N": 12}, "02_contrastive_directions": {"N": 12},
        "03_moras_pipeline": {"N": 8}, "04_ablations": {"N": 3}}  # examples per class: CI time


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source.strip(), sorted(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_py_and_ipynb_agree(name: str) -> None:
    """The reviewed .py source and the .ipynb Jupyter opens hold the same cells (jupytext --sync after edits)."""
    py, ipynb = REPO / "notebooks" / f"{name}.py", REPO / "notebooks" / f"{name}.ipynb"
    from_py, from_ipynb = read_notebook(py), nbformat.read(ipynb, as_version=4)
    assert _cells(from_py) == _cells(from_ipynb), f"{py.name} and {ipynb.name} differ: run `jupytext --sync {py}`"
    assert from_ipynb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", f"{ipynb.name} unpaired"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_is_papermill_clean(name: str) -> None:
    """One tagged cell of simple `NAME = literal  # comment` lines; no quote characters in comments."""
    nb = read_notebook(REPO / "notebooks" / f"{name}.py")
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{name}: {len(cells)} cells tagged parameters"
    names = set()
    for line in cells[0].source.splitlines():
        code, _, comment = line.partition("#")
        assert "'" not in comment and '"' not in comment, f"{name}: quote in a parameters comment: {line!r}"
        stmt = ast.parse(code).body
        assert len(stmt) == 1 and isinstance(stmt[0], ast.Assign), f"{name}: not a simple assignment: {line!r}"
        ast.literal_eval(stmt[0].value)  # a literal papermill can type
        names.add(stmt[0].targets[0].id)
    assert {"MODEL", "DEVICE", "DTYPE", "DATA", "N", "FIGURES"} <= names


NOISE = re.compile(r"Warning|WARNING|warnings\.warn|Loading weights|IProgress")


def noise_lines(nb) -> list[str]:
    """Lines of the executed notebook's stderr / error outputs that are warnings or third-party noise (progress
    bars of our own loops are allowed: they say where a long step is)."""
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            text = o.get("text", "") if o.get("output_type") == "stream" else "\n".join(o.get("traceback", []))
            out += [f"cell {i}: {line[:200]}" for line in str(text).splitlines() if NOISE.search(line)]
    return out


def test_noise_lines_finds_a_warning() -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="a.py:3: UserWarning: careful\n"),
        nbformat.v4.new_output("stream", name="stderr", text="states: 100%|##| 2/2 [00:01<00:00, 1.9it/s]\n")])])
    assert noise_lines(nb) == ["cell 0: a.py:3: UserWarning: careful"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_from_elsewhere_and_writes_figures(name: str, tmp_path: Path) -> None:
    """A copy of the notebook runs with the kernel in an unrelated folder; its default relative FIGURES
    ("../figures") lands next to the notebook's folder, not the working directory. It prints no warning and
    no third-party noise (transformers' loading bars, tqdm's IProgress warning)."""
    nbdir, elsewhere = tmp_path / "nbs", tmp_path / "elsewhere"
    nbdir.mkdir(), elsewhere.mkdir()
    path = nbdir / f"{name}.ipynb"
    shutil.copy(REPO / "notebooks" / f"{name}.ipynb", path)
    nb = execute(path, FAST[name], timeout=600, cwd=elsewhere)
    assert not noise_lines(nb), f"{name} printed warnings or noise:\n" + "\n".join(noise_lines(nb))
    figs = tmp_path / "figures"
    assert not any(elsewhere.iterdir()), f"{name} wrote into the working directory: {list(elsewhere.iterdir())}"
    pngs = sorted(figs.glob(f"{name[:2]}_*.png"))
    assert pngs, f"{name} wrote no PNG figure into FIGURES"
    for png in pngs:
        im = np.asarray(Image.open(png).convert("RGB"))
        assert im.shape[0] >= 200 and im.shape[1] >= 300, f"{png.name} is only {im.shape[:2]}"
        assert im.std() > 5, f"{png.name} is blank"
        html = png.with_suffix(".html").read_text(encoding="utf-8")
        assert "Plotly.newPlot" in html, f"{png.name} has no HTML twin"


def test_saving_in_place_keeps_the_source_and_drops_the_injected_cell(tmp_path: Path) -> None:
    """execute(path, params, save_to=path): outputs come from the injected values, but the saved notebook's
    cells are the original ones (its jupytext twin stays equal); saved elsewhere it keeps papermill's cell."""
    params = nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]})
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell("print(X * 10)")])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    execute(path, {"X": 2}, save_to=tmp_path / "out.ipynb", timeout=120)
    execute(path, {"X": 3}, save_to=path, timeout=120)
    saved, out = read_notebook(path), read_notebook(tmp_path / "out.ipynb")
    assert [c.source for c in saved.cells] == ["X = 1", "print(X * 10)"]
    assert saved.cells[1].outputs[0]["text"] == "30\n"
    assert [c.source for c in out.cells] == ["X = 1", "# injected parameters\nX = 2", "print(X * 10)"]
