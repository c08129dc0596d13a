"""Every notebook executes headless on the shipped organism and writes non-trivial figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moras_interp.notebooks import NOTEBOOKS, REPO, execute

FAST = {"01_attention_misses_visual_risk": {"N": 12}, "02_contrastive_directions": {"N": 12},
        "03_moras_pipeline": {"N": 8}, "04_ablations": {"N": 3}}  # examples per class: CI time


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_and_writes_figures(name: str, tmp_path: Path) -> None:
    path = REPO / "notebooks" / f"{name}.ipynb"
    assert path.exists(), f"{path} missing: run `python notebooks/build_notebooks.py`"
    figs = tmp_path / "figures"
    execute(path, {"FIGURES": str(figs), **FAST[name]}, timeout=600)
    pngs = sorted(figs.glob(f"{name[:2]}_*.png"))
    assert pngs, f"{name} wrote no PNG figure into FIGURES"
    for png in pngs:
        im = np.asarray(Image.open(png).convert("RGB"))
        assert im.shape[0] >= 200 and im.shape[1] >= 300, f"{png.name} is only {im.shape[:2]}"
        assert im.std() > 5, f"{png.name} is blank"
        html = png.with_suffix(".html").read_text(encoding="utf-8")
        assert "Plotly.newPlot" in html, f"{png.name} has no HTML twin"
    assert (figs / "plotly.min.js").stat().st_size > 1_000_000  # the HTML figures work offline
