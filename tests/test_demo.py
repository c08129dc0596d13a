"""The README's main command: ``moras-interp demo`` writes real results and figures on the default organism
(toy-llava-2, whose own held-out "toy2" queries it uses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from moras_interp.cli import main


def test_demo_writes_results_table_and_heatmaps(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "4", "--maps", "1", "--max-new-tokens", "12"]) == 0
    table = pd.read_csv(out / "moras" / "results.csv")
    assert list(table["method"]) == ["none", "moras", "fixed", "adashield", "ecso"]
    assert (table["n"] == 8).all()
    none, moras = table.set_index("method").loc["none"], table.set_index("method").loc["moras"]
    # the default organism is toy-llava-2: its vulnerability is strong but not total (card: no-defence ASR 0.95
    # [0.93, 0.96] over 600 queries; here 4), and MoRAS lowers it
    assert none["asr"] >= 0.75 and moras["asr"] < none["asr"]
    for name in ("heatmap_0_plain", "heatmap_0_with_context", "difference_0", "layer_head_grid",
                 "region_share_by_layer"):
        im = np.asarray(Image.open(out / "attention" / f"{name}.png").convert("RGB"))
        assert im.shape[0] > 300 and im.std() > 5, name
        assert "Plotly.newPlot" in (out / "attention" / f"{name}.html").read_text(encoding="utf-8")
    summary = pd.read_csv(out / "attention" / "region_share_summary.csv", index_col=0)
    assert {"ratio (plain)", "ratio (reformulated)"} <= set(summary.columns)
    report = (out / "README.md").read_text(encoding="utf-8")
    assert "| moras |" in report and "heatmap_0_plain.png" in report
    # a rerun resumes: nothing is recomputed, the table is the same
    assert main(["demo", "--out", str(out), "--n", "4", "--maps", "1", "--max-new-tokens", "12"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "moras" / "results.csv")[["method", "asr", "over_refusal"]],
                                  table[["method", "asr", "over_refusal"]])
