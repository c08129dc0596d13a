"""Smoke test of bench/bench_moras.py on the tiny LLaVA shape: it writes its JSON / markdown, and the
official-style loop (batch 1, stage-3 answer without KV cache) gives the same answers as batched MoRAS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_and_official_loop_agrees_with_moras(tmp_path):
    cmd = [sys.executable, "-m", "bench.bench_moras", "--models", "tiny", "--batch-size", "3", "--max-new-tokens", "5",
           "--repeats", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "moras_tiny_b3_t5.json").read_text())
    assert res["official_answers_equal"] == 1.0
    m = res["measurements"]
    assert set(m) == {"plain_b1", "moras_b1", "official_b1", "plain_bN", "steered_bN", "moras_bN"}
    assert all(v["median_s"] > 0 for v in m.values())
    for k, v in res["throughput_qps"].items():
        assert abs(v - (1 if k.endswith("b1") else 3) / m[k]["median_s"]) < 1e-6 * v
    assert res["ratios"]["moras_bN_vs_official"] == res["throughput_qps"]["moras_bN"] / res["throughput_qps"]["official_b1"]
    assert "MoRAS batch 3 vs official-style loop" in (tmp_path / "moras_tiny_b3_t5.md").read_text()
