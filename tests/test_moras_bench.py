"""bench/bench_moras.py: the --quick run writes its report, and the authors' loop (batch 1, KV cache, steering by a
plain torch hook on the final norm; bench/moras_authors.py) gives batched MoRAS's answers and risks — a check that
fails when the steering schedule is off by one step (shown below), so the equality is not vacuous."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from bench import moras_authors
from bench.bench_moras import load, queries
from bench.moras_authors import AuthorsSetup, authors_loop
from moras_interp.moras import MoRAS
from moras_interp.moras.prompts import LLAVA_V1_SYSTEM

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_report_and_answers(tmp_path):
    cmd = [sys.executable, "-m", "bench.bench_moras", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    res = json.loads((tmp_path / "moras_tiny_t5.json").read_text())
    assert res["answers_ok"] is True
    assert set(res["answer_check"]) == {"authors_vs_moras_b3", "nocache_vs_moras_b3"}
    for v in res["answer_check"].values():
        assert v == {"answers_equal": 1.0, "risk_max_abs_diff": v["risk_max_abs_diff"], "queries": 3}
        assert v["risk_max_abs_diff"] < 1e-3
    m, thr, r = res["measurements"], res["throughput_qps"], res["ratios"]
    assert set(m) == {"authors", "moras_b3", "plain_b3", "nocache"}
    assert all(v["median_s"] > 0 and v["repeats"] == 1 for v in m.values())
    for k, n in {"authors": 3, "nocache": 3, "moras_b3": 3, "plain_b3": 3}.items():
        assert abs(thr[k] - n / m[k]["median_s"]) < 1e-9 * thr[k]
    assert r["moras_b3_vs_authors"] == thr["moras_b3"] / thr["authors"]
    assert r["pipeline_vs_plain_b3"] == m["moras_b3"]["median_s"] / m["plain_b3"]["median_s"]
    assert r["stage3_vs_plain_b3"] == res["stage3_s"]["3"] / m["plain_b3"]["median_s"]
    assert r["nocache_vs_authors"] == thr["authors"] / thr["nocache"]
    assert res["answer_steps"] == {"3": 5} and res["stops_at_eos"] is False
    assert len(res["risks"]) == 3 and min(res["risks"]) > 0 and max(res["risks"]) < 1  # steering is partial
    md = (tmp_path / "moras_tiny_t5.md").read_text()
    assert "MoRAS / authors' loop" in md and "stage 3 / plain generate" in md


def test_authors_loop_equals_moras_and_detects_a_wrong_schedule(monkeypatch):
    torch.set_num_threads(1)
    model, eos = load("tiny", "cpu")
    assert eos is False
    ims, qs, labels = queries(4, 56)
    moras = MoRAS.calibrate(model, list(zip(ims, qs, labels)), batch_size=4, progress=False, system=LLAVA_V1_SYSTEM)
    ours = moras.run(ims, qs, max_new_tokens=6, batch_size=4, progress=False)
    cal = moras.calibration
    u = moras.prototype.final
    setup = AuthorsSetup(u, cal.x0, cal.k, 0.3, LLAVA_V1_SYSTEM, 40)
    theirs = authors_loop(model, setup, ims, qs, 6)
    assert [a.answer for a in theirs] == [t.answer for t in ours]
    assert [a.n_risk_steps for a in theirs] == [3] * 4
    assert max(abs(a.risk - t.risk) for a, t in zip(theirs, ours)) < 1e-3
    assert any(0.05 < t.risk < 0.95 for t in ours)
    # The schedule off by one step (u_{t-1} at step t, u_{N-1} at step 0; same r) must change some answer, else
    # the equality above would prove nothing about it.
    late_u = u.roll(1, dims=0)
    orig = moras_authors.steer_final_norm

    def late(norm, prototype, r):
        return orig(norm, late_u, r)

    monkeypatch.setattr(moras_authors, "steer_final_norm", late)
    shifted = authors_loop(model, setup, ims, qs, 6)
    assert [a.risk for a in shifted] == [a.risk for a in theirs]
    assert [a.answer for a in shifted] != [t.answer for t in ours]
