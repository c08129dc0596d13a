"""The evaluation runner: several methods over a labelled set, judged, resumable, summarised with figures.

Layout of ``out``::

    records.jsonl    one JSON object per (method, example), appended a chunk at a time (single write + fsync);
                     a run killed mid-write leaves at most a torn last line, which the next run drops
    run.json         what was run (model, data, methods, options)
    results.csv / results.json / results.md    the per-method table (:func:`report.summary_table`)
    figures/         rates.{html,png}, risk_<method>.{html,png}

Re-running with the same ``out`` skips every (method, example id) already in ``records.jsonl``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from moras_interp.atomic import atomic_write_bytes, atomic_write_text
from moras_interp.eval.datasets import Example
from moras_interp.eval.judge import KeywordJudge, RefusalJudge
from moras_interp.eval.metrics import contains_accuracy
from moras_interp.moras.baselines import Method
from moras_interp.moras.examples import gold_answer, safety_label
from moras_interp.moras.report import markdown_table, summary_table, write_figures
from moras_interp.moras.trace import MoRASTrace


class RecordStore:
    """Append-only JSONL of per-example results, safe against a run killed at any point."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[dict[str, Any]]:
        """Every complete record; a torn last line (killed mid-write) is removed from the file first."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
            atomic_write_bytes(self.path, raw)
        out = []
        for line in raw.decode("utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def done(self) -> set[tuple[str, str]]:
        """(method, example id) pairs already recorded."""
        return {(r["method"], r["id"]) for r in self.load()}

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records with one ``write`` and an ``fsync``."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def record(method: str, ex: Example, trace: MoRASTrace, refused: bool) -> dict[str, Any]:
    """The JSON record of one (method, example): judged answer, risk, per-stage times and token counts."""
    gold = gold_answer(ex)
    return {
        "method": method, "id": ex.id, "label": safety_label(ex), "gold": gold, "question": ex.text,
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
             figures: bool = True, run_info: dict[str, Any] | None = None) -> EvalResult:
    """Run every method on every example not yet recorded in ``out``, then summarise and plot.

    Args:
        examples: labelled examples (unique ids; see :func:`moras_interp.moras.examples.load_examples`).
        methods: name → anything with :meth:`MoRAS.run`'s interface (MoRAS, the baselines).
        out: results folder (created; resumed if it already holds records).
        batch_size: queries per ``run`` call, and per atomic append.
        judge: refusal judge (default :class:`KeywordJudge`); True = refused.
        run_info: written to ``out/run.json`` (model, data, options) for provenance.
    """
    if not methods:
        raise ValueError("No methods to evaluate: pass e.g. {'none': NoDefence(model), 'moras': moras}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
    _check_examples(examples)
    out = Path(out)
    if not out.is_dir():
        out.mkdir(parents=True, exist_ok=True)
    judge = judge or KeywordJudge()
    store = RecordStore(out / "records.jsonl")
    done = store.done()
    todo = {name: [ex for ex in examples if (name, ex.id) not in done] for name in methods}
    total = sum(len(v) for v in todo.values())
    # a finished folder the user may not write to (chmod -w, a read-only mount) is summarised without writing
    read_only = total == 0 and not os.access(out, os.W_OK)
    if run_info is not None:
        run_p = out / "run.json"
        if run_p.exists() and done:
            prev = json.loads(run_p.read_text(encoding="utf-8"))
            diff = [k for k in ("model", "data", "format", "max_new_tokens", "n_tokens", "gamma", "judge")
                    if k in prev and k in run_info and prev[k] != run_info[k]]
            if diff:
                raise ValueError(f"{out} holds results of a different run ({', '.join(f'{k}: {prev[k]!r} ≠ {run_info[k]!r}' for k in diff)}); "
                                 "resuming would mix them. Use another --out folder or delete this one.")
        if not read_only:
            atomic_write_text(run_p, json.dumps(run_info, indent=1, default=str))
    n_done = len(examples) * len(methods) - total
    bar = tqdm(total=total, desc="evaluate", disable=not progress)
    if n_done and progress:
        bar.write(f"resuming {out}: {n_done} of {len(examples) * len(methods)} (method, example) results already done")
    for name, method in methods.items():
        bar.set_postfix_str(name)
        items = todo[name]
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            questions = [ex.text for ex in chunk]
            traces = method.run([ex.load_image() for ex in chunk], questions, max_new_tokens=max_new_tokens,
                                batch_size=len(chunk), progress=False)
            refused = judge([t.answer for t in traces], questions)
            store.append(record(name, ex, t, r) for ex, t, r in zip(chunk, traces, refused))
            bar.update(len(chunk))
    bar.close()
    wanted = {ex.id for ex in examples}
    recs = pd.DataFrame([r for r in store.load() if r["method"] in methods and r["id"] in wanted])
    table = summary_table(recs, list(methods))
    files = {"records": store.path}
    if read_only:
        files |= {k: out / f"results.{k}" for k in ("csv", "json", "md")}
        files |= {p.stem + "_" + p.suffix[1:]: p for p in sorted((out / "figures").glob("*")) if figures}
        return EvalResult(recs, table, out, files, total)
    files["csv"] = atomic_write_text(out / "results.csv", table.to_csv(index=False))
    payload = {"summary": json.loads(table.to_json(orient="records")), "run": run_info or {},
               "n_examples": len(examples), "methods": list(methods)}
    files["json"] = atomic_write_text(out / "results.json", json.dumps(payload, indent=1, default=str))
    files["md"] = atomic_write_text(out / "results.md", markdown_table(table))
    if figures:
        files |= write_figures(recs, table, out / "figures")
    return EvalResult(recs, table, out, files, total)


__all__ = ["EvalResult", "RecordStore", "atomic_write_text", "evaluate", "record"]
