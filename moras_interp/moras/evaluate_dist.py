"""Data-parallel :func:`~moras_interp.moras.evaluate.evaluate`: ranks share the batches, rank 0 merges.

Under ``torchrun --nproc_per_node K`` (see :mod:`moras_interp.distributed`):

1. rank 0 takes the folder lock of ``out``, checks / writes the run identity (as a single process does) and
   repairs torn record lines; every other rank then checks its own identity against ``identity.json`` (a rank
   started with other options is refused) and takes the lock of its own folder ``out/ranks/rank{r}/``;
2. every rank reads the records already written (``records.jsonl`` and every ``ranks/rank*/records.jsonl``,
   left by a killed job of any size) and lists the pending units: the batches of ``batch_size`` examples of
   each method in the single-process order, keeping those with an example not yet recorded; unit ``i`` is
   computed by rank ``i % K`` and its records appended to ``ranks/rank{r}/records.jsonl`` (one write + fsync,
   sealed records, as in a single process);
3. rank 0 appends the ranks' records to ``records.jsonl`` in the single-process order (method, then example),
   writes the tables and figures from it, and removes ``ranks/``.

A killed rank loses at most its batch in flight: the next run (any number of ranks) skips every recorded
(method, example). The merged ``records.jsonl`` of a fresh K-rank run equals a single-process run's line for
line (up to the timing fields ``stage_times`` / ``latency_s``), and so do the tables (up to latency columns).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from moras_interp import distributed
from moras_interp.atomic import atomic_write_text, folder_lock
from moras_interp.eval.datasets import Example
from moras_interp.eval.judge import RefusalJudge
from moras_interp.identity import check_or_write
from moras_interp.moras.baselines import Method

RECORDS = "records.jsonl"


def _rank_stores(out: Path) -> list[Any]:
    from moras_interp.moras.evaluate import RecordStore

    return [RecordStore(d / RECORDS) for d in distributed.rank_dirs(out) if (d / RECORDS).exists()]


def merge_rank_records(out: Path, store: Any, methods: Sequence[str], examples: Sequence[Example]) -> int:
    """Append to ``store`` (``out/records.jsonl``) the ranks' records it lacks, in single-process order (this
    run's methods, then examples; others after, as found), then delete the ranks' record files. Returns the
    number appended. Idempotent: a merge killed half-way is completed by the next run."""
    have = {(r["method"], r["id"]) for r in store.load()}
    pending: dict[tuple[str, str], dict[str, Any]] = {}
    rank_stores = _rank_stores(out)
    for rs in rank_stores:
        for r in rs.load():
            pending.setdefault((r["method"], r["id"]), r)
    order = {(m, ex.id): i for i, (m, ex) in enumerate((m, ex) for m in methods for ex in examples)}
    new = [pending[k] for k in sorted((k for k in pending if k not in have), key=lambda k: order.get(k, len(order)))]
    store.append(new)  # each record keeps its seal; the line is the one the rank wrote
    for rs in rank_stores:
        rs.path.unlink(missing_ok=True)
    return len(new)


def _units(examples: Sequence[Example], methods: Mapping[str, Method], batch_size: int,
           done: set[tuple[str, str]]) -> list[tuple[str, list[Example]]]:
    """(method, batch of not-yet-recorded examples) for every single-process batch with something to do."""
    units = []
    for name in methods:
        for i in range(0, len(examples), batch_size):
            todo = [ex for ex in examples[i:i + batch_size] if (name, ex.id) not in done]
            if todo:
                units.append((name, todo))
    return units


def evaluate_distributed(examples: Sequence[Example], methods: Mapping[str, Method], out: Path, *, batch_size: int,
                         max_new_tokens: int, judge: RefusalJudge, progress: bool, figures: bool,
                         run_info: dict[str, Any] | None, identity: Any, hashes: dict[str | None, str],
                         overwrite: bool) -> Any:
    """The multi-process body of ``evaluate`` (same arguments; see the module docstring)."""
    from moras_interp.moras.evaluate import (
        ARTEFACTS,
        RecordStore,
        _done,
        _finish,
        check_or_write_readonly,
        record,
    )

    d = distributed.info()
    store = RecordStore(out / RECORDS)
    with contextlib.ExitStack() as locks:
        def setup_main() -> None:
            if not d.is_main:
                return
            locks.enter_context(folder_lock(out))
            check_or_write(out, identity, overwrite, artefacts=ARTEFACTS, merge=("methods",))
            if run_info is not None:
                atomic_write_text(out / "run.json", json.dumps(run_info, indent=1, default=str))
            merge_rank_records(out, store, list(methods), examples)  # a killed job's records (repairs torn lines)

        def setup_rank() -> set[tuple[str, str]]:
            if not d.is_main:
                check_or_write_readonly(out, identity)
            locks.enter_context(folder_lock(distributed.rank_dir(out, d.rank)))
            return _done(store, methods, hashes)

        distributed.agree(setup_main, "evaluate: rank 0 checks the folder")
        done = distributed.agree(setup_rank, "evaluate: ranks read the records")
        assert done is not None
        mine = d.mine(_units(examples, methods, batch_size, done))
        own = RecordStore(distributed.rank_dir(out, d.rank) / RECORDS)

        def work() -> int:
            bar = tqdm(total=sum(len(u) for _, u in mine), desc=f"evaluate (rank {d.rank}/{d.world_size})",
                       disable=not progress or not d.is_main)
            for name, chunk in mine:
                bar.set_postfix_str(name)
                questions = [ex.text for ex in chunk]
                traces = methods[name].run([ex.load_image() for ex in chunk], questions,
                                           max_new_tokens=max_new_tokens, batch_size=len(chunk), progress=False)
                refused = judge([t.answer for t in traces], questions)
                own.append(record(name, ex, t, r, hashes[ex.id]) for ex, t, r in zip(chunk, traces, refused))
                bar.update(len(chunk))
            bar.close()
            return sum(len(u) for _, u in mine)

        n_run = distributed.agree(work, "evaluate: ranks compute their batches")

        def finish() -> Any:
            if d.is_main:
                merge_rank_records(out, store, list(methods), examples)
                return _finish(examples, methods, out, store, identity, hashes, run_info, n_run or 0, write=True,
                               figures=figures)
            return None

        res = distributed.agree(finish, "evaluate: rank 0 merges and writes the tables")
    distributed.agree(None, "evaluate: ranks release their folders")
    if d.is_main:
        shutil.rmtree(out / distributed.RANKS_DIR, ignore_errors=True)
    else:
        res = _finish(examples, methods, out, store, identity, hashes, run_info, n_run or 0, write=False)
        res.files |= {k: out / f"results.{k}" for k in ("csv", "json", "md")}  # written by rank 0
    res.n_run = n_run or 0  # this rank's
    return res


__all__ = ["evaluate_distributed", "merge_rank_records"]
