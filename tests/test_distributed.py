"""Data parallelism on torch.distributed (gloo, 2 CPU processes, the organism): a 2-rank job writes what a single
process writes (records line for line, tables, activation shards and manifest byte for byte, the ablation table),
and a job whose rank 1 is SIGKILLed mid-run resumes with every unit of work computed exactly once.

The ranks are forked from the test process (which holds the organism) with the variables torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the code path is the one ``torchrun`` takes;
``test_torchrun_cli`` runs the real ``torchrun -m moras_interp.cli moras`` once.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import moras_interp as mi
from moras_interp import distributed
from moras_interp.ablations import run_grid
from moras_interp.activations import collect_activations
from moras_interp.moras.baselines import AdaShieldS, NoDefence
from moras_interp.moras.evaluate import evaluate
from moras_interp.organisms import toy_examples

ROOT = Path(__file__).resolve().parents[1]
MODEL: Any = None
TIMING = ("stage_times", "latency_s", "record_sha256")


@pytest.fixture(scope="module")
def organism() -> Any:
    global MODEL
    MODEL = mi.load_model("toy-llava")
    return MODEL


class _Logged:
    """A method that logs every example it computes, and (rank 1, when asked) SIGKILLs its process before its
    ``kill_at``-th batch: a rank dying mid-run."""

    def __init__(self, inner: Any, name: str, log: Path, kill_at: int | None) -> None:
        self.inner, self.name = inner, name  # the run identity sees these (public), not the test's plumbing
        self._log, self._kill_at, self._calls = log, kill_at, 0

    def run(self, images: Any, questions: list[str], **kw: Any) -> Any:
        self._calls += 1
        if self._kill_at is not None and self._calls == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        out = self.inner.run(images, questions, **kw)
        _log(self._log, [f"eval {self.name} {hashlib.sha256(im.tobytes()).hexdigest()[:16]} {q}"
                         for im, q in zip(images, questions)])
        return out


def _log(path: Path, lines: list[str]) -> None:
    with open(path, "a") as fh:
        fh.write("".join(line + "\n" for line in lines))


def _job(out: Path, log: Path, kill: str | None = None) -> None:
    """Collect activations, evaluate two methods and run a 3-setting grid into ``out`` (any number of ranks).
    ``kill="collect"``: rank 1 SIGKILLs itself after writing its first shard; ``"eval"``: at its second batch."""
    rank1 = distributed.info().rank == 1
    exs = toy_examples(3, 3)

    def on_shard(k: int, store: Any) -> None:
        _log(log, [f"collect {k}"])
        if kill == "collect" and rank1:
            os.kill(os.getpid(), signal.SIGKILL)

    collect_activations(MODEL, exs, names="blocks.*.hook_resid_post", batch_size=2, shard_size=2, out=out / "acts",
                        progress=False, on_shard=on_shard)
    kill_at = 2 if kill == "eval" and rank1 else None
    methods = {"none": _Logged(NoDefence(MODEL), "none", log, kill_at),
               "adashield": _Logged(AdaShieldS(MODEL), "adashield", log, kill_at)}
    evaluate(exs, methods, out / "eval", batch_size=2, max_new_tokens=4, progress=False, figures=False)

    def score(setting: dict[str, Any], data: list[Any]) -> list[dict[str, Any]]:
        _log(log, [f"grid {setting['k']}"])
        batch = MODEL.prepare([ex.load_image() for ex in data], [ex.text for ex in data])
        with torch.no_grad():
            logits = MODEL.hf(**batch.to(MODEL.device, MODEL.dtype).inputs).logits[:, -1]
        return [{"top": int(row.topk(setting["k"]).indices[-1])} for row in logits]

    run_grid({"k": [1, 2, 3]}, score, exs, out=out / "grid", progress=False)


def _child(rank: int, world: int, port: int, out: Path, log: Path, kill: str | None) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _job(out, log.with_suffix(f".rank{rank}.log"), kill)


def _launch(world: int, out: Path, log: Path, kill: str | None = None) -> list[int | None]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_child, args=(r, world, port, out, log, kill)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    return [p.exitcode for p in procs]


def _single(out: Path, log: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks, so the kernels reduce in the same order
    try:
        _job(out, log)
    finally:
        torch.set_num_threads(threads)


def _records(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


def _table(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    return df[[c for c in df.columns if "latency" not in c and not c.startswith("time_")]]


def _same_outputs(a: Path, b: Path) -> None:
    assert _records(a / "eval/records.jsonl") == _records(b / "eval/records.jsonl")
    pd.testing.assert_frame_equal(_table(a / "eval/results.csv"), _table(b / "eval/results.csv"))
    shards = sorted(p.name for p in (a / "acts").glob("shard_*.safetensors"))
    assert shards == sorted(p.name for p in (b / "acts").glob("shard_*.safetensors")) and len(shards) == 3
    for name in [*shards, "manifest.json"]:  # the manifest lists every shard with its sha256
        assert (a / "acts" / name).read_bytes() == (b / "acts" / name).read_bytes(), name
    assert (a / "grid/results.csv").read_bytes() == (b / "grid/results.csv").read_bytes()
    for sub in ("acts", "eval", "grid"):
        assert not (b / sub / distributed.RANKS_DIR).exists()


def _computed(log_dir: Path) -> Counter[str]:
    return Counter(line for p in log_dir.glob("*.log") for line in p.read_text().splitlines())


def test_two_ranks_equal_one_process_and_a_killed_rank_resumes(organism, tmp_path):
    _single(tmp_path / "single", tmp_path / "single.log")
    expected = _computed(tmp_path)  # 3 shards, 2 methods x 6 examples, 3 settings: each once
    assert sum(expected.values()) == 3 + 12 + 3 and set(expected.values()) == {1}

    (tmp_path / "logs").mkdir()
    assert _launch(2, tmp_path / "two", tmp_path / "logs/two") == [0, 0]
    _same_outputs(tmp_path / "single", tmp_path / "two")
    by_rank = [Counter(p.read_text().splitlines()) for p in sorted((tmp_path / "logs").glob("*.log"))]
    assert len(by_rank) == 2 and all(by_rank) and sum(by_rank, Counter()) == expected  # split, nothing twice

    # rank 1 is SIGKILLed after its first shard; then, resumed, at its second evaluation batch; then resumed again
    shutil.rmtree(tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    job, logs = tmp_path / "killed", tmp_path / "logs"
    codes = _launch(2, job, logs / "first", kill="collect")
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    assert _computed(logs) == Counter({"collect 0": 1, "collect 1": 1, "collect 2": 1})  # rank 0: 0, 2; rank 1: 1
    assert (job / "acts/ranks/rank1/shards.json").is_file()  # rank 1's shard, waiting to be adopted
    shutil.copytree(job, tmp_path / "copy1")
    codes = _launch(2, job, logs / "second", kill="eval")
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    done = _computed(logs)
    assert sum(done.values()) - 3 == sum(k.startswith("eval") for k in done) and 0 < sum(done.values()) - 3 < 12
    assert (job / "eval/ranks").is_dir() and not (job / "acts/ranks").exists()  # shards adopted, records wait
    shutil.copytree(job, tmp_path / "copy2")
    after_second = Counter(done)
    assert _launch(2, job, logs / "third") == [0, 0]
    assert _computed(logs) == expected  # every unit of work exactly once over the three jobs
    _same_outputs(tmp_path / "single", job)

    for copy, before in ((tmp_path / "copy1", Counter({"collect 0": 1, "collect 1": 1, "collect 2": 1})),
                         (tmp_path / "copy2", after_second)):  # one process resumes what the ranks left
        log = tmp_path / f"{copy.name}.resume.log"
        _single(copy, log)
        assert before + Counter(log.read_text().splitlines()) == expected
        _same_outputs(tmp_path / "single", copy)


def test_launch_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.info() == distributed.DistInfo(0, 1, 0) and not distributed.info().enabled
    assert distributed.local_device("cuda") == "cuda"
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = distributed.info()
    assert d.enabled and not d.is_main and d.mine(list(range(7))) == [1, 4]
    assert distributed.local_device("cuda") == "cuda:1" and distributed.local_device("cuda:0") == "cuda:0"
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(RuntimeError, match="need 0 <= RANK < WORLD_SIZE"):
        distributed.info()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(RuntimeError, match="RANK='one' is not an integer"):
        distributed.info()
    monkeypatch.delenv("RANK")
    with pytest.raises(RuntimeError, match="RANK is not set"):
        distributed.info()


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_torchrun_cli(tmp_path):
    """``torchrun --nproc_per_node 2 -m moras_interp.cli moras`` writes the single-process records and table (rank 0
    builds the prototype and calibration, rank 1 reloads them)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = ["moras", "--model", "toy-llava", "--data", "toy", "--limit", "6", "--methods", "none,moras",
            "--calibration-n", "2", "--batch-size", "2", "--max-new-tokens", "4", "--no-figures", "--quiet"]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    for cmd, out in (([sys.executable, "-m", "moras_interp.cli"], "one"),
                     ([torchrun, "--nproc_per_node", "2", "-m", "moras_interp.cli"], "two")):
        done = subprocess.run([*cmd, *args, "--out", str(tmp_path / out)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # Same records; floats to 1e-6 relative: rank 1 reloads rank 0's prototype / calibration, and a cosine
    # near 0 (4.08e-06) came back 4e-12 apart, below float32 resolution of the summed states.
    one, two = _records(tmp_path / "one/records.jsonl"), _records(tmp_path / "two/records.jsonl")
    assert [r.keys() for r in one] == [r.keys() for r in two]
    for a, b in zip(one, two):
        for k in a:
            assert a[k] == (pytest.approx(b[k], rel=1e-6, abs=1e-9) if isinstance(b[k], float) else b[k]), k
    pd.testing.assert_frame_equal(_table(tmp_path / "one/results.csv"), _table(tmp_path / "two/results.csv"),
                                  rtol=1e-6)
    assert not (tmp_path / "two/ranks").exists()
