"""Data parallelism on ``torch.distributed``: rank/world detection, sharding, error-propagating barriers.

The one home of the package's multi-process logic. A process started by ``torchrun --nproc_per_node K``
(or ``accelerate launch``, which sets the same variables) sees ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`info` reads them, and the runners (:func:`moras_interp.moras.evaluate.evaluate`,
:func:`moras_interp.activations.collect_activations`, :func:`moras_interp.ablations.run_grid`) then split
their work across the ranks. Without these variables (or with ``WORLD_SIZE=1``) nothing here touches
``torch.distributed`` and every runner behaves exactly as in a single process.

Sharding is **round-robin over the pending units in the single-process order**: unit ``i`` of the list of
units still to do (a batch of one method for ``evaluate``, a shard for ``collect_activations``, a setting for
``run_grid``) goes to rank ``i % K``; every rank computes the same list from the same files, read between two
barriers (the first after rank 0's checks and repairs, the second before any rank writes), so the split needs
no communication and is the same on every rank. A unit is computed exactly as a single
process computes it (same examples in the same batch), so merged results are identical.

Control messages (errors, barriers) go over a CPU ``gloo`` group, also when the default group is NCCL (GPU
ranks); :func:`agree` is a barrier that raises on every rank when any rank failed, so one rank's error never
leaves the others waiting. The wait is bounded by ``MORAS_INTERP_DIST_TIMEOUT_S`` (default 86400 s: ranks
wait at the final barrier for the slowest one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
SHARDING = "round-robin: pending unit i (in single-process order) -> rank i % world_size"
RANKS_DIR = "ranks"
"""Sub-folder of an output folder holding each rank's own resumable files (``ranks/rank{r}/``)."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``world_size == 1``: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when the work is split over more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: checks identities, merges the ranks' files and writes the tables."""
        return self.rank == 0

    def owns(self, i: int) -> bool:
        """Whether pending unit ``i`` is this rank's (:data:`SHARDING`)."""
        return i % self.world_size == self.rank

    def mine(self, units: Sequence[T]) -> list[T]:
        """The units of ``units`` this rank computes, in order."""
        return [u for i, u in enumerate(units) if self.owns(i)]


def _env_int(name: str, default: int | None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise RuntimeError(f"{name} is not set although WORLD_SIZE is: launch with torchrun or accelerate "
                               "launch, which set RANK, WORLD_SIZE and LOCAL_RANK together.")
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={raw!r} is not an integer (set by torchrun / "
                           "accelerate launch; unset it for a single-process run).") from None


def info() -> DistInfo:
    """Rank, world size and local rank from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (single process if unset)."""
    if os.environ.get("WORLD_SIZE") in (None, ""):
        return DistInfo()
    world = _env_int("WORLD_SIZE", None)
    rank = _env_int("RANK", None)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise RuntimeError(f"inconsistent launch variables RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: "
                           "need 0 <= RANK < WORLD_SIZE.")
    return DistInfo(rank, world, local)


def local_device(device: str | None) -> str | None:
    """``"cuda"`` → ``"cuda:{LOCAL_RANK}"`` in a multi-process job (one GPU per rank); anything else unchanged.

    An explicit index (``cuda:1``) or a ``device_map`` (model parallel inside each rank) is left as given:
    with ``device_map``, restrict each rank's GPUs yourself (e.g. ``CUDA_VISIBLE_DEVICES``).
    """
    d = info()
    if d.enabled and device == "cuda":
        return f"cuda:{d.local_rank}"
    return device


_GROUP: Any = None


def _timeout() -> timedelta:
    raw = os.environ.get("MORAS_INTERP_DIST_TIMEOUT_S", "86400")
    try:
        return timedelta(seconds=float(raw))
    except ValueError:
        raise RuntimeError(f"MORAS_INTERP_DIST_TIMEOUT_S={raw!r} is not a number of seconds.") from None


def group() -> Any:
    """The CPU (gloo) process group for control messages; initialises ``torch.distributed`` if needed
    (``nccl`` for the default group when CUDA is available, ``gloo`` otherwise; ``env://`` rendezvous)."""
    global _GROUP
    if _GROUP is not None:
        return _GROUP
    import torch
    import torch.distributed as dist

    d = info()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=d.rank, world_size=d.world_size, timeout=_timeout())
    if dist.get_world_size() != d.world_size or dist.get_rank() != d.rank:
        raise RuntimeError(f"torch.distributed is initialised as rank {dist.get_rank()} of {dist.get_world_size()} "
                           f"but RANK/WORLD_SIZE say {d.rank} of {d.world_size}.")
    _GROUP = dist.new_group(backend="gloo", timeout=_timeout()) if dist.get_backend() != "gloo" else dist.group.WORLD
    return _GROUP


class RankFailedError(RuntimeError):
    """Another rank of the job failed; the message names it and its error."""


def agree(fn: Callable[[], T] | None = None, what: str = "step") -> T | None:
    """Run ``fn`` (if any) on this rank, then wait for every rank; raise on every rank if any rank failed.

    Single process: just ``fn()``. The local exception is re-raised as is; a rank whose peer failed raises
    :class:`RankFailedError` naming the peer and its error.
    """
    d = info()
    if not d.enabled:
        return fn() if fn is not None else None
    import torch.distributed as dist

    result, err, exc = None, None, None
    try:
        result = fn() if fn is not None else None
    except Exception as e:
        err, exc = f"{type(e).__name__}: {e}", e
    errors: list[Any] = [None] * d.world_size
    dist.all_gather_object(errors, err, group=group())
    if exc is not None:
        raise exc
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        r, e = failed[0]
        raise RankFailedError(f"{what}: rank {r} of {d.world_size} failed ({e}); this rank stopped too.")
    return result


def main_first(fn: Callable[[], T], what: str = "step") -> T:
    """Run ``fn`` on rank 0, then (after a barrier) on the other ranks one after another; every rank gets its
    own result. For steps that build a file on rank 0 and reload it elsewhere (each under its own folder lock)."""
    d = info()
    if not d.enabled:
        return fn()
    out: T | None = None
    for r in range(d.world_size):
        res = agree(fn if r == d.rank else None, what=f"{what} (rank {r})")
        if r == d.rank:
            out = res
    return out  # type: ignore[return-value]


def rank_dir(out: str | os.PathLike, rank: int) -> Path:
    """``out/ranks/rank{rank}``: the folder of one rank's own files (its lock, its records)."""
    return Path(out) / RANKS_DIR / f"rank{rank}"


def rank_dirs(out: str | os.PathLike) -> list[Path]:
    """Every rank folder under ``out`` (of this or an earlier job, whatever its world size), by rank."""
    root = Path(out) / RANKS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("rank") and p.name[4:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[4:]))


__all__ = ["SHARDING", "DistInfo", "RankFailedError", "agree", "group", "info", "local_device", "main_first",
           "rank_dir", "rank_dirs"]
