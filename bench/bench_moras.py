"""MoRAS throughput: our batched pipeline vs the authors' loop (batch 1, KV cache) vs plain generation.

Ways to answer the same queries on the same model (see :mod:`bench.moras_authors` for the authors' code and why
their stage 3 runs with the KV cache although it passes ``use_cache=False``):

* ``authors``  — the authors' per-query flow in plain transformers: batch 1, stage 1 ``generate`` (≤ 40 tokens),
                 stage 2 greedy N = 3 with states, stage 3 ``generate`` with the KV cache, the first N steps
                 steered by a torch hook on the final norm; prototype loaded once. The baseline.
* ``moras_bB`` — :meth:`MoRAS.run` at batch B (stages 1–3 batched with left padding).
* ``plain_bB`` — HF ``generate`` of the stage-3 prompts (image + question, no defence) at batch B, as many
                 decode steps as MoRAS's stage 3 ran: the floor for producing these answers.
* ``nocache``  — labelled extra: the authors' loop with stage 3 really without KV cache (what this benchmark
                 used to call "official-style"; nobody runs it). Only at ≤ 64 answer tokens (it is quadratic).

Ratios: ``moras_bB_vs_authors`` = per-query throughput of MoRAS at batch B / the authors' loop's (goal ≥ 10× at
B = 16 on a GPU); ``stage3_vs_plain_bB`` = MoRAS's stage-3 time (``trace.stage_times["answer"]``, summed over
the batch) / ``plain_bB`` — what steering costs on top of generating the answers (goal ≤ 1.25×);
``pipeline_vs_plain_bB`` = the whole MoRAS run (3 ``generate`` calls: 40 context tokens, N risk tokens and the
answer) / ``plain_bB``; ``nocache_vs_authors`` = time per query of the extra / the authors' loop.
The authors' loop must give MoRAS's answers (and r): checked on every run, an error when they differ in fp32.

Timing: methods alternate in rounds (median over rounds), so load changes on a shared machine hit all alike;
one torch thread on CPU. Models: ``organism`` (the shipped toy LLaVA, real answers that stop at EOS);
``tiny`` / ``scaled`` / ``full`` (LLaVA-1.5 shapes with random weights and EOS suppressed, so every answer runs
to the budget — the only way to measure 512-token decoding). Calibration: MoRAS.calibrate on the bench's own
labelled queries (official recipe), so r varies across queries; the authors' loop uses the same (x0, k)::

    python -m bench.bench_moras            # CPU plan: organism 32; scaled 32 (batch 16, 8) and 512 (batch 16)
    python -m bench.bench_moras --quick    # seconds: tiny shape, 5 tokens, batch 3 (CI)
    python -m bench.bench_moras --full     # GPU: LLaVA-1.5-7B shape, bf16, 32 and 512 tokens, batch 16 and 8

Writes ``bench/results/moras_<model>_t<tokens>.json`` and ``.md`` per run and ``moras_summary_<plan>.md`` (plan:
cpu, full, quick or custom) with one row per run and batch size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from bench.common import Measurement, interleaved_times, write_results
from bench.llava_shapes import FULL, MORAS_SCALED, MORAS_TINY, LlavaShape, build_llava, wrap
from bench.moras_authors import AuthorsSetup, authors_loop
from moras_interp.atomic import atomic_write_text
from moras_interp.models.mllm import MLLM
from moras_interp.moras import MoRAS
from moras_interp.moras.prompts import LLAVA_V1_SYSTEM

SHAPES: dict[str, LlavaShape] = {"tiny": MORAS_TINY, "scaled": MORAS_SCALED, "full": FULL}
"""LLaVA-1.5 shapes with random weights (``full`` = 7B: Vicuna-7B + CLIP ViT-L/14-336, 576 image tokens)."""


@dataclass(frozen=True)
class Run:
    """One benchmark configuration: model, answer budget, batch sizes, timed rounds, queries for the loops."""

    model: str
    max_new_tokens: int
    batch_sizes: tuple[int, ...]
    rounds: int
    authors_queries: int
    nocache_queries: int


CPU_PLAN = (Run("organism", 32, (16, 8), 5, 4, 2), Run("scaled", 32, (16, 8), 3, 4, 2),
            Run("scaled", 512, (16,), 2, 2, 0))
FULL_PLAN = (Run("full", 32, (16, 8), 3, 4, 2), Run("full", 512, (16, 8), 3, 2, 0))
QUICK_PLAN = (Run("tiny", 5, (3,), 1, 3, 3),)


def load(name: str, device: str) -> tuple[MLLM, bool]:
    """(model, stops_at_eos): the organism keeps its EOS; random-weight shapes generate the full budget."""
    if name == "organism":
        from moras_interp.models.loading import load_model

        return load_model("toy-llava", device=device), True
    if name not in SHAPES:
        raise SystemExit(f"unknown model {name!r}: use organism, tiny, scaled or full")
    hf, proc = build_llava(SHAPES[name], device, torch.bfloat16 if device.startswith("cuda") else torch.float32)
    hf.generation_config.eos_token_id = None  # random weights: always generate max_new_tokens
    return wrap(hf, proc), False


def queries(n: int, size: int = 64) -> tuple[list[Any], list[str], list[str]]:
    """n distinct images (the toy world's scenes), questions of varying length and labels, unsafe and safe
    alternating (so that any prefix, e.g. the queries sent through the authors' loop, has both)."""
    from moras_interp.organisms import tasks

    h, b = tasks.harmful_image_queries((n + 1) // 2), tasks.benign_image_queries(n // 2)
    qs = [q for pair in zip(h, b) for q in pair] + h[len(b):]
    return ([q.image.resize((size, size)) for q in qs], [q.question for q in qs],
            ["unsafe" if i % 2 == 0 else "safe" for i in range(len(qs))])


def alternating(fns: dict[str, tuple[str, Callable[[], Any]]], *, rounds: int, device: str) -> dict[str, Measurement]:
    """Median wall time per function over ``rounds`` rounds that run every function once in turn (peak memory
    is not measured: ``peak_extra_bytes=-1``)."""
    times = interleaved_times({k: fn for k, (_, fn) in fns.items()}, rounds=rounds, device=device)
    return {k: Measurement(fns[k][0], statistics.median(v), min(v), -1, rounds) for k, v in times.items()}


def bench_run(run: Run, model: MLLM, eos: bool, device: str) -> dict[str, Any]:
    """All measurements of one :class:`Run`; returns the JSON payload (``answers_ok``: the loops gave MoRAS's answers)."""
    n = max((*run.batch_sizes, run.authors_queries, run.nocache_queries))
    ims, qs, labels = queries(n, model.adapter.processor.image_processor.crop_size["height"])
    moras = MoRAS.calibrate(model, list(zip(ims, qs, labels)), batch_size=max(run.batch_sizes), progress=False,
                            system=LLAVA_V1_SYSTEM)
    cal = moras.calibration
    assert cal is not None
    setup = AuthorsSetup(moras.prototype.final.to(model.device), cal.x0, cal.k, moras.config.gamma,
                         LLAVA_V1_SYSTEM, moras.config.max_context_tokens)
    T = run.max_new_tokens
    traces: dict[int, list[Any]] = {}
    stage3: dict[int, list[float]] = {b: [] for b in run.batch_sizes}

    def run_moras(b: int, tokens: int = T) -> None:
        traces[b] = moras.run(ims[:b], qs[:b], max_new_tokens=tokens, batch_size=b, progress=False)
        stage3[b].append(sum(t.stage_times["answer"] for t in traces[b]))

    for b in run.batch_sizes:  # warm-up; with EOS it also tells how many decode steps stage 3 runs
        run_moras(b, T if eos else 2)
        stage3[b].clear()
    steps = {b: max(t.token_counts["answer_new"] for t in traces[b]) if eos else T for b in run.batch_sizes}

    def plain(b: int) -> None:
        batch = model.prepare(ims[:b], qs[:b], system=LLAVA_V1_SYSTEM)
        model.hf.generate(**batch.to(model.device, model.dtype).inputs, max_new_tokens=steps[b],
                          min_new_tokens=steps[b] if eos else None, do_sample=False,
                          pad_token_id=model.tokenizer.pad_token_id)

    out: dict[str, list[Any]] = {}
    na, nc = run.authors_queries, run.nocache_queries
    fns: dict[str, tuple[str, Callable[[], Any]]] = {
        "authors": (f"authors' loop (batch 1, KV cache), {na} queries",
                    lambda: out.__setitem__("authors", authors_loop(model, setup, ims[:na], qs[:na], T)))}
    for b in run.batch_sizes:
        fns[f"moras_b{b}"] = (f"MoRAS, batch {b}", lambda b=b: run_moras(b))
        fns[f"plain_b{b}"] = (f"plain generate of the stage-3 prompts, batch {b}", lambda b=b: plain(b))
    if nc:
        fns["nocache"] = (f"extra: authors' loop, stage 3 without KV cache, {nc} queries",
                          lambda: out.__setitem__("nocache", authors_loop(model, setup, ims[:nc], qs[:nc], T,
                                                                          stage3_cache=False)))
    authors_loop(model, setup, ims[:1], qs[:1], 2)  # warm-up of the batch-1 path
    plain(run.batch_sizes[0])
    m = alternating(fns, rounds=run.rounds, device=device)
    per_query = {"authors": na, "nocache": nc, **{f"moras_b{b}": b for b in run.batch_sizes},
                 **{f"plain_b{b}": b for b in run.batch_sizes}}
    thr = {k: per_query[k] / v.median_s for k, v in m.items()}
    ratios: dict[str, float] = {}
    for b in run.batch_sizes:
        ratios[f"moras_b{b}_vs_authors"] = thr[f"moras_b{b}"] / thr["authors"]
        ratios[f"stage3_vs_plain_b{b}"] = statistics.median(stage3[b]) / m[f"plain_b{b}"].median_s
        ratios[f"pipeline_vs_plain_b{b}"] = m[f"moras_b{b}"].median_s / m[f"plain_b{b}"].median_s
    if nc:
        ratios["nocache_vs_authors"] = thr["authors"] / thr["nocache"]
    check = {}
    for b in run.batch_sizes:
        for loop in ("authors", "nocache") if nc else ("authors",):
            ref = out[loop]
            ours = traces[b][: len(ref)]
            check[f"{loop}_vs_moras_b{b}"] = {
                "answers_equal": sum(a.answer == t.answer for a, t in zip(ref, ours)) / len(ref),
                "risk_max_abs_diff": max(abs(a.risk - t.risk) for a, t in zip(ref, ours)), "queries": len(ref)}
    payload = {
        "model": run.model, "model_repr": repr(model), "max_new_tokens": T, "stops_at_eos": eos,
        "answer_steps": steps, "batch_sizes": list(run.batch_sizes), "rounds": run.rounds,
        "device": device, "dtype": str(model.dtype), "torch": torch.__version__,
        "transformers": transformers.__version__, "platform": platform.platform(),
        "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "measurements": m, "throughput_qps": thr, "ratios": ratios,
        "stage3_s": {b: statistics.median(v) for b, v in stage3.items()},
        "risks": [t.risk for t in traces[max(run.batch_sizes)]], "calibration": {"x0": cal.x0, "k": cal.k},
        "answer_check": check,
        "goals": {"moras_b16_vs_authors >= 10 (GPU)": ratios.get("moras_b16_vs_authors"),
                  "stage3_vs_plain_b16 <= 1.25": ratios.get("stage3_vs_plain_b16")}}
    payload["answers_ok"] = all(v["answers_equal"] == 1.0 for v in check.values())
    return payload


def markdown(res: dict[str, Any]) -> str:
    """A markdown table of one run's results and its ratios."""
    m, thr, r = res["measurements"], res["throughput_qps"], res["ratios"]
    rows = [f"| {v.name} | {v.median_s:.3f} | {thr[k]:.3f} |" for k, v in m.items()]
    bs = res["batch_sizes"]
    ratio = "; ".join(
        f"batch {b}: MoRAS / authors' loop **{r[f'moras_b{b}_vs_authors']:.2f}×** per-query throughput, "
        f"stage 3 / plain generate {r[f'stage3_vs_plain_b{b}']:.3f}×, whole MoRAS / plain generate "
        f"{r[f'pipeline_vs_plain_b{b}']:.2f}×" for b in bs)
    extra = (f" Extra: the no-cache loop is {r['nocache_vs_authors']:.2f}× slower per query than the authors' loop."
             if "nocache_vs_authors" in r else "")
    agree = ", ".join(f"{k} {v['answers_equal']:.0%} of {v['queries']} (max |Δr| {v['risk_max_abs_diff']:.1e})"
                      for k, v in res["answer_check"].items())
    return "\n".join([
        f"**{res['model']}**, {res['max_new_tokens']} answer tokens ({'answers stop at EOS' if res['stops_at_eos'] else 'EOS suppressed'}; "
        f"stage 3 ran {res['answer_steps']} decode steps per batch size), {res['device']} {res['dtype']}, "
        f"{res['threads']} thread(s), median of {res['rounds']} alternating rounds, load average at the end "
        f"{res['load_average'][0]:.1f}", "",
        "| method | median s per call | queries/s |", "|---|---|---|", *rows, "",
        f"{ratio}.{extra} Answers equal to MoRAS's: {agree}.", ""])


SUMMARY_HEAD = ("| model, answer tokens | batch | authors' loop q/s | MoRAS q/s | **MoRAS / authors** | "
                "stage 3 / plain generate | whole MoRAS / plain generate | no-cache extra / authors (time per query) |\n"
                "|---|---|---|---|---|---|---|---|")


def summary_rows(res: dict[str, Any]) -> str:
    """Rows of the summary table (one per batch size) for one run."""
    thr, r = res["throughput_qps"], res["ratios"]
    nc = f"{r['nocache_vs_authors']:.2f}×" if "nocache_vs_authors" in r else "—"
    return "\n".join(
        f"| {res['model']}, {res['max_new_tokens']} | {b} | {thr['authors']:.3g} | {thr[f'moras_b{b}']:.3g} | "
        f"**{r[f'moras_b{b}_vs_authors']:.2f}×** | {r[f'stage3_vs_plain_b{b}']:.2f}× | "
        f"{r[f'pipeline_vs_plain_b{b}']:.2f}× | {nc} |" for b in res["batch_sizes"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shape, 5 tokens, batch 3, one round (seconds; CI)")
    ap.add_argument("--full", action="store_true", help="LLaVA-1.5-7B shape, bf16, on CUDA")
    ap.add_argument("--models", default=None, help="comma-separated: organism, tiny, scaled, full (replaces the plan)")
    ap.add_argument("--max-new-tokens", default="32", help="with --models: comma-separated answer budgets")
    ap.add_argument("--batch-sizes", default="16,8", help="with --models: comma-separated batch sizes")
    ap.add_argument("--rounds", type=int, default=3, help="with --models: timed rounds (median)")
    ap.add_argument("--authors-queries", type=int, default=4, help="with --models: queries through the authors' loop")
    ap.add_argument("--nocache-queries", type=int, default=2, help="with --models: queries through the no-cache "
                    "extra (0 = skip; skipped anyway above 64 answer tokens)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on CPU: on a shared machine OpenMP spin-waits of oversubscribed "
                         "threads inflate per-op latency up to 10×)")
    a = ap.parse_args(argv)
    if a.models:
        plan = tuple(Run(name.strip(), int(t), tuple(int(b) for b in a.batch_sizes.split(",")), a.rounds,
                         a.authors_queries, a.nocache_queries if int(t) <= 64 else 0)
                     for name in a.models.split(",") if name.strip() for t in a.max_new_tokens.split(","))
    else:
        plan = FULL_PLAN if a.full else QUICK_PLAN if a.quick else CPU_PLAN
    device = a.device or ("cuda" if a.full else "cpu")
    if a.threads or device == "cpu":
        torch.set_num_threads(a.threads or 1)
    failed, summary = [], []
    loaded: dict[str, tuple[MLLM, bool]] = {}
    for run in plan:
        if run.model not in loaded:
            loaded.clear()
            loaded[run.model] = load(run.model, device)
        model, eos = loaded[run.model]
        res = bench_run(run, model, eos, device)
        stem = f"moras_{run.model}_t{run.max_new_tokens}"
        write_results(Path(a.out) / f"{stem}.json", res)
        md = markdown(res)
        atomic_write_text(Path(a.out) / f"{stem}.md", md)
        print(md, flush=True)
        summary.append(summary_rows(res))
        if not res["answers_ok"]:
            print(f"WARNING: the authors' loop and MoRAS disagree ({stem}): {res['answer_check']}", flush=True)
            if model.dtype == torch.float32:
                failed.append(stem)
    name = "custom" if a.models else "full" if a.full else "quick" if a.quick else "cpu"
    atomic_write_text(Path(a.out) / f"moras_summary_{name}.md", "\n".join([SUMMARY_HEAD, *summary, ""]))
    if failed:
        raise SystemExit(f"The authors' loop and MoRAS gave different answers in fp32: {failed} (see the JSON)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
