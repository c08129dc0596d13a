"""The evaluation runner: several methods over a labelled set, judged, resumable, summarised with figures.

Layout of ``out``::

    records.jsonl    one JSON object per (method, example), appended a chunk at a time (single write + fsync);
                     a run killed mid-write leaves at most a torn last line, which the next run drops
    identity.json    the run identity (:mod:`moras_interp.moras.run_identity`): model config + weights
                     fingerprint, processor, every method's options (prototype and calibration content),
                     seed, judge, generation settings, package version
    run.json         what was run (model, data, methods, options), for people
    .lock            the folder lock: one writer at a time (:func:`moras_interp.atomic.folder_lock`)
    results.csv / results.json / results.md    the per-method table (:func:`report.summary_table`)
    figures/         rates.{html,png}, risk_<method>.{html,png}
    ranks/           only while a multi-process (torchrun) run is unfinished: each rank's own records, merged
                     into records.jsonl in single-process order by rank 0 (:mod:`moras_interp.moras.evaluate_dist`)

Re-running with the same ``out`` skips every (method, example id) already in ``records.jsonl`` — only when the
run identity is equal and the example's content (text, label, image bytes, metadata; ``example_sha256`` in each
record) is unchanged; otherwise it is refused with a per-field diff (``overwrite=True`` / ``--overwrite``
starts the folder afresh). Methods may be added to a finished folder. Records are de-duplicated by
(method, id) on load: a repeated record that differs only in its timings is dropped with a warning, one that
differs in its result is an error naming both lines.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from moras_interp import distributed
from moras_interp.atomic import atomic_append_bytes, atomic_write_bytes, atomic_write_text, folder_lock
from moras_interp.eval.datasets import Example
from moras_interp.eval.judge import KeywordJudge, RefusalJudge
from moras_interp.eval.metrics import contains_accuracy
from moras_interp.identity import IdentityMismatchError, check_or_write, data_fingerprint, sha256_json
from moras_interp.moras.baselines import Method
from moras_interp.moras.examples import gold_answer, safety_label
from moras_interp.moras.report import markdown_table, summary_table, write_figures
from moras_interp.moras.run_identity import evaluation_identity
from moras_interp.moras.trace import MoRASTrace
from moras_interp.progress import tqdm
from moras_interp.readers import ReadError, check_fields, read_jsonl

_RECORD_TYPES: dict[str, type | tuple[type, ...]] = {"method": str, "id": str, "label": str, "answer": str,
                                                     "refused": bool, "risk": (int, float)}
_TIMING_FIELDS = ("stage_times", "latency_s")
ARTEFACTS = ("records.jsonl", "run.json", "results.csv", "results.json", "results.md", "figures", "ranks")
"""What an evaluation writes into ``out`` (deleted by ``overwrite=True``)."""


class RecordStore:
    """Append-only JSONL of per-example results, safe against a run killed at any point."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[dict[str, Any]]:
        """Every complete record, validated and de-duplicated by (method, id); a torn last line (killed
        mid-write) is removed from the file first (when the file is writable)."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n") and os.access(self.path, os.W_OK):
            atomic_write_bytes(self.path, raw[: raw.rfind(b"\n") + 1])
        out: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        dropped = 0
        for line, rec in read_jsonl(self.path, drop_torn_tail=True):
            check_fields(rec, _RECORD_TYPES, f"{self.path}:{line}", optional=("risk",))
            if rec.get(SEAL) != seal(rec):
                raise ReadError(f"{self.path}:{line} (method {rec['method']!r}, id {rec['id']!r}) does not match "
                                f"its checksum {SEAL!r}: it was edited after the run wrote it, so its verdict cannot be "
                                "trusted. Delete that line to recompute it, or start afresh with --overwrite.")
            key = (rec["method"], rec["id"])
            if key in out:
                first, prev = out[key]
                if _result(prev) != _result(rec):
                    raise ReadError(f"{self.path}:{line} repeats (method {key[0]!r}, id {key[1]!r}) of line {first} "
                                    "with a different result (two runs wrote this folder). Delete one of the two "
                                    "lines, or start afresh with --overwrite.")
                dropped += 1
                continue
            out[key] = (line, rec)
        if dropped:
            warnings.warn(f"{self.path}: dropped {dropped} repeated record(s) (same method, id and result).",
                          stacklevel=2)
        return [rec for _, rec in out.values()]

    def done(self) -> set[tuple[str, str]]:
        """(method, example id) pairs already recorded."""
        return {(r["method"], r["id"]) for r in self.load()}

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records with one ``write`` and an ``fsync`` (:func:`moras_interp.atomic.atomic_append_bytes`)."""
        data = "".join(json.dumps(r | {SEAL: seal(r)}, ensure_ascii=False) + "\n" for r in records)
        atomic_append_bytes(self.path, data.encode())


SEAL = "record_sha256"
"""Each record carries the sha256 of its own content, so a hand-edited verdict or answer is refused on load."""


def seal(rec: dict[str, Any]) -> str:
    """sha256 (hex) of a record's canonical JSON without its :data:`SEAL` field."""
    return sha256_json({k: v for k, v in rec.items() if k != SEAL})


def _result(rec: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in rec.items() if k not in (*_TIMING_FIELDS, SEAL)}, sort_keys=True)


def record(method: str, ex: Example, trace: MoRASTrace, refused: bool, example_sha256: str | None = None
           ) -> dict[str, Any]:
    """The JSON record of one (method, example): judged answer, risk, per-stage times and token counts;
    ``example_sha256`` = :func:`moras_interp.identity.data_fingerprint` of the example (checked on resume)."""
    gold = gold_answer(ex)
    return {
        "method": method, "id": ex.id, "example_sha256": example_sha256, "label": safety_label(ex), "gold": gold, "question": ex.text,
        "image": str(ex.image) if isinstance(ex.image, (str, Path)) else None,
        "answer": trace.answer, "refused": bool(refused),
        "correct": None if gold is None else bool(contains_accuracy([trace.answer], [gold])),
        "similarity": trace.similarity, "risk": trace.risk, "visual_context": trace.visual_context,
        "reformulated": trace.reformulated, "stage2_tokens": trace.stage2_tokens,
        "displacement_norms": trace.displacement_norms, "stage_times": trace.stage_times,
        "latency_s": float(sum(trace.stage_times.values())), "token_counts": trace.token_counts,
        "prompts": trace.prompts,
    }


@dataclass
class EvalResult:
    """What :func:`evaluate` produced: per-example records, the per-method table and the files written."""

    records: pd.DataFrame
    summary: pd.DataFrame
    out: Path
    files: dict[str, Path] = field(default_factory=dict)
    n_run: int = 0
    """Examples actually run in this call (0 when everything was already recorded)."""

    def markdown(self) -> str:
        return markdown_table(self.summary)


def _check_examples(examples: Sequence[Example]) -> None:
    if not examples:
        raise ValueError("No examples to evaluate.")
    ids = [ex.id for ex in examples]
    if any(i is None for i in ids) or len(set(ids)) != len(ids):
        raise ValueError("Every example needs a unique id for resuming; load them with "
                         "moras_interp.moras.examples.load_examples, which assigns unique ids.")
    for ex in examples:
        safety_label(ex)  # raises early with a clear message


def evaluate(examples: Sequence[Example], methods: Mapping[str, Method], out: str | Path, *, batch_size: int = 8,
             max_new_tokens: int = 64, judge: RefusalJudge | None = None, progress: bool = True,
             figures: bool = True, run_info: dict[str, Any] | None = None, seed: int | None = None,
             overwrite: bool = False) -> EvalResult:
    """Run every method on every example not yet recorded in ``out``, then summarise and plot.

    Args:
        examples: labelled examples (unique ids; see :func:`moras_interp.moras.examples.load_examples`).
        methods: name → anything with :meth:`MoRAS.run`'s interface (MoRAS, the baselines).
        out: results folder (created; resumed if it holds records of the same run identity, else refused).
        batch_size: queries per ``run`` call, and per atomic append.
        judge: refusal judge (default :class:`KeywordJudge`); True = refused.
        run_info: written to ``out/run.json`` (model, data, options) for people.
        seed: the run's seed (part of the run identity).
        overwrite: discard whatever ``out`` holds and start afresh.

    Raises:
        IdentityMismatchError: ``out`` holds results of another run (per-field diff) or of changed examples.
        FolderLockedError: another process is writing to ``out``.
    """
    if not methods:
        raise ValueError("No methods to evaluate: pass e.g. {'none': NoDefence(model), 'moras': moras}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
    _check_examples(examples)
    out = Path(out)
    judge = judge or KeywordJudge()
    identity = evaluation_identity(methods, judge, max_new_tokens=max_new_tokens, seed=seed)
    hashes = {ex.id: data_fingerprint([ex]) for ex in examples}
    store = RecordStore(out / "records.jsonl")
    if not overwrite and out.is_dir() and not os.access(out, os.W_OK):  # a finished read-only folder: summarise
        return _finish(examples, methods, out, store, identity, hashes, run_info, 0, write=False)
    if distributed.info().enabled:  # torchrun / accelerate launch: the ranks share the batches
        from moras_interp.moras.evaluate_dist import evaluate_distributed

        return evaluate_distributed(examples, methods, out, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                    judge=judge, progress=progress, figures=figures, run_info=run_info,
                                    identity=identity, hashes=hashes, overwrite=overwrite)
    with folder_lock(out):
        check_or_write(out, identity, overwrite, artefacts=ARTEFACTS, merge=("methods",))
        _adopt_rank_records(out, store, methods, examples)
        done = _done(store, methods, hashes)
        todo = {name: [ex for ex in examples if (name, ex.id) not in done] for name in methods}
        total = sum(len(v) for v in todo.values())
        if run_info is not None:
            atomic_write_text(out / "run.json", json.dumps(run_info, indent=1, default=str))
        n_done = len(examples) * len(methods) - total
        bar = tqdm(total=total, desc="evaluate", disable=not progress)
        if n_done and progress:
            bar.write(f"resuming {out}: {n_done} of {len(examples) * len(methods)} (method, example) results done")
        for name, method in methods.items():
            bar.set_postfix_str(name)
            items = todo[name]
            for i in range(0, len(items), batch_size):
                chunk = items[i : i + batch_size]
                questions = [ex.text for ex in chunk]
                traces = method.run([ex.load_image() for ex in chunk], questions, max_new_tokens=max_new_tokens,
                                    batch_size=len(chunk), progress=False)
                refused = judge([t.answer for t in traces], questions)
                store.append(record(name, ex, t, r, hashes[ex.id]) for ex, t, r in zip(chunk, traces, refused))
                bar.update(len(chunk))
        bar.close()
        return _finish(examples, methods, out, store, identity, hashes, run_info, total, write=True, figures=figures)


def _adopt_rank_records(out: Path, store: RecordStore, methods: Mapping[str, Method],
                        examples: Sequence[Example]) -> None:
    """Fold the per-rank records a killed multi-process run left in ``out/ranks/`` into ``records.jsonl``."""
    if (out / distributed.RANKS_DIR).is_dir():
        from moras_interp.moras.evaluate_dist import merge_rank_records

        merge_rank_records(out, store, list(methods), examples)
        shutil.rmtree(out / distributed.RANKS_DIR, ignore_errors=True)


def _done(store: RecordStore, methods: Mapping[str, Method], hashes: dict[str | None, str]) -> set[tuple[str, str]]:
    """(method, id) pairs recorded for this run's examples; refuses records of an example whose content changed."""
    done, stale = set(), []
    for r in store.load():
        if r["method"] in methods and r["id"] in hashes:
            if r.get("example_sha256") != hashes[r["id"]]:
                stale.append(r["id"])
            done.add((r["method"], r["id"]))
    if stale:
        ids = sorted(set(stale))
        raise IdentityMismatchError(
            f"{store.path} holds results for {len(ids)} example(s) whose content (text, label, image bytes or "
            f"metadata) has changed since they were recorded, e.g. id {ids[0]!r}"
            + (f" and {ids[1]!r}" if len(ids) > 1 else "") + ". Resuming would mix them: pass --overwrite "
            "(overwrite=True) to discard the folder's results, or use a new output folder.")
    return done


def _finish(examples: Sequence[Example], methods: Mapping[str, Method], out: Path, store: RecordStore,
            identity: Any, hashes: dict[str | None, str], run_info: dict[str, Any] | None, n_run: int, *,
            write: bool, figures: bool = False) -> EvalResult:
    """The per-method table of ``out``'s records for these examples (and, when ``write``, its files)."""
    if not write:
        check_or_write_readonly(out, identity)
        _done(store, methods, hashes)
    wanted = set(hashes)
    recs = pd.DataFrame([r for r in store.load() if r["method"] in methods and r["id"] in wanted])
    missing = len(examples) * len(methods) - len(recs)
    if not write and missing:
        raise PermissionError(f"{out} is read-only and lacks {missing} (method, example) results of this run: "
                              "copy it somewhere writable to finish the run.")
    table = summary_table(recs, list(methods))
    files = {"records": store.path}
    if not write:
        return EvalResult(recs, table, out, files, 0)
    files["csv"] = atomic_write_text(out / "results.csv", table.to_csv(index=False))
    payload = {"summary": json.loads(table.to_json(orient="records")), "run": run_info or {},
               "n_examples": len(examples), "methods": list(methods)}
    files["json"] = atomic_write_text(out / "results.json", json.dumps(payload, indent=1, default=str))
    files["md"] = atomic_write_text(out / "results.md", markdown_table(table))
    if figures:
        files |= write_figures(recs, table, out / "figures")
    return EvalResult(recs, table, out, files, n_run)


def check_or_write_readonly(out: Path, identity: Any) -> None:
    """The identity check of a read-only folder (nothing is written; a missing identity is refused)."""
    from moras_interp.identity import RunIdentity
    from moras_interp.readers import read_json

    path = out / "identity.json"
    if not path.exists():
        raise IdentityMismatchError(f"{out} is read-only and has no identity.json: its results cannot be matched "
                                    "to this run.")
    diffs = RunIdentity.from_dict(read_json(path), str(path)).diff(identity, ("methods",))
    if diffs:
        raise IdentityMismatchError(f"{out} holds results of a different run:\n" + "\n".join(diffs))


__all__ = ["ARTEFACTS", "EvalResult", "RecordStore", "atomic_write_text", "evaluate", "record"]
