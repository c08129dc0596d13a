"""bench/gpu_suite.py end to end on CPU at the tiny shape: one JSON + Markdown report with every section, the
environment, the shape, and ratios that are the quotients of the measurements taken in the same run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_suite_runs_end_to_end_on_cpu(tmp_path):
    cmd = [sys.executable, "-m", "bench.gpu_suite", "--shape", "tiny", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rep = json.loads((tmp_path / "gpu_suite_tiny.json").read_text())
    assert set(rep["sections"]) == {"attention", "collect", "moras", "backend"}
    assert rep["shape"]["hidden"] == 64 and rep["dtype"] == "torch.float32"
    assert {"device", "torch", "transformers", "nnsight", "moras_interp"} <= set(rep["environment"])
    att = rep["sections"]["attention"]["batches"]["1"]
    m = att["measurements"]
    assert att["ratios"]["time_ours_over_sdpa"] == m["cross_modal_attention"]["median_s"] / m["sdpa_forward"]["median_s"]
    assert att["max_abs_diff_vs_eager"] < 1e-4  # the rows it times are HF eager's
    col = rep["sections"]["collect"]
    assert col["ratios"]["collect_mem_throughput_vs_hf"] == col["results"]["hf"]["median_s"] / \
        col["results"]["collect_mem"]["median_s"]
    assert col["max_abs_diff_vs_hf"] < 1e-4
    mo = rep["sections"]["moras"]
    assert mo["answers_ok"] is True  # the authors' loop gives the batched pipeline's answers
    assert mo["ratios"]["pipeline_vs_plain_b2"] == mo["measurements"]["moras_b2"]["median_s"] / \
        mo["measurements"]["plain_b2"]["median_s"]
    be = rep["sections"]["backend"]
    assert be["same_tokens"] is True  # bench_backends raises when the backends' tokens differ
    assert be["ratios"]["nnsight_vs_hooks"] == be["median_s"]["nnsight"] / be["median_s"]["hooks"]
    md = (tmp_path / "gpu_suite_tiny.md").read_text()
    assert "| attention | b1: time_ours_over_sdpa |" in md and "| moras | moras_b2_vs_authors |" in md
