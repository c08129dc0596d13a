"""Shared benchmark helpers: wall time (median of repeats) and peak extra memory of a callable.

On CUDA the peak comes from ``torch.cuda.max_memory_allocated`` (relative to the allocation before the call);
on CPU from a thread that samples the process RSS every millisecond (relative to the RSS before the call),
which is coarser but sees every allocator. Benchmarks report ratios against plain transformers measured in
the same process, never absolute limits.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from moras_interp.atomic import atomic_write_text


@dataclass
class Measurement:
    """Result of :func:`measure`: median/min seconds over ``repeats`` and peak extra bytes of one call."""

    name: str
    median_s: float
    min_s: float
    peak_extra_bytes: int
    repeats: int

    def ratio(self, ref: Measurement) -> dict[str, float]:
        """Time and memory of this measurement divided by those of ``ref``."""
        return {"time": self.median_s / max(ref.median_s, 1e-12),
                "memory": self.peak_extra_bytes / max(ref.peak_extra_bytes, 1)}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssPeak:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> _RssPeak:
        self.base = _rss()
        self.peak = self.base
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_times(fns: dict[str, Callable[[], Any]], *, rounds: int,
                      device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Wall times (s) per function over ``rounds`` rounds that run every function once in turn, so all see the
    same machine load (ratios between them can be paired by round)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def measure(name: str, fn: Callable[[], Any], *, device: torch.device | str = "cpu", repeats: int = 5,
            warmup: int = 1) -> Measurement:
    """Time ``fn`` ``repeats`` times after ``warmup`` calls and measure the peak extra memory of one call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with _RssPeak() as m:
            out = fn()
        peak = m.peak - m.base
    del out
    return Measurement(name, statistics.median(times), min(times), int(peak), repeats)


def write_results(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (measurements are converted with ``asdict``) as JSON, atomically."""
    def conv(x: Any) -> Any:
        if isinstance(x, Measurement):
            return asdict(x)
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, list):
            return [conv(v) for v in x]
        return x

    atomic_write_text(path, json.dumps(conv(payload), indent=1))
