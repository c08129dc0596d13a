"""MoRAS latency and throughput: our batched pipeline vs plain generation vs an official-style loop.

Three ways to answer the same queries on the same model:

* ``plain``     — ``model.generate`` on image + question (no defence): the floor.
* ``moras``     — :meth:`MoRAS.run` (stages 1–3 batched with left padding, KV cache everywhere, steering
                  hooks that remove themselves after step N−1).
* ``official``  — the authors' loop structure: batch 1, stages 1–2 with ``generate``, and the stage-3 answer
                  generated with ``use_cache=False`` (every step re-runs the whole sequence, image included).
                  (The official code also ``torch.load``-s the prototype inside every forward; not emulated.)

Reported: per-query latency at batch 1 (median of repeats), throughput in queries/s at ``--batch-size``,
stage-3 steered vs plain decode, and the ratio MoRAS-batched / official throughput (goal ≥ 10× at batch 8 on
GPU). EOS is switched off (``generation_config.eos_token_id = None``) so every method generates exactly the
token budgets (40 context tokens, N = 3 risk tokens, ``--max-new-tokens`` answer tokens): equal work, whatever
the answers say. Models::

    python -m bench.bench_moras                     # organism (toy-llava) + a scaled LLaVA config, CPU
    python -m bench.bench_moras --models scaled --batch-size 8 --max-new-tokens 64
    python -m bench.bench_moras --full              # LLaVA-1.5-7B shape, random bf16 weights, on CUDA

Writes ``bench/results/moras_<model>_b<batch>_t<new tokens>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import Measurement, sync, write_results
from bench.llava_shapes import FULL, MORAS_SCALED, MORAS_TINY, LlavaShape, build_llava, wrap
from moras_interp.atomic import atomic_write_text
from moras_interp.models.mllm import MLLM
from moras_interp.moras import Calibration, MoRAS, UnsafePrototype
from moras_interp.moras.prompts import CONTEXT_PROMPT, reformulate, safety_query
from moras_interp.moras.risk import similarity
from moras_interp.moras.states import FINAL, generate_with_states
from moras_interp.moras.steering import interpolate_towards

SHAPES: dict[str, LlavaShape] = {"tiny": MORAS_TINY, "scaled": MORAS_SCALED, "full": FULL}
"""LLaVA-1.5 shapes with random weights (``full`` = 7B: Vicuna-7B + CLIP ViT-L/14-336, 576 image tokens)."""


def random_llava(shape: str, device: str, dtype: torch.dtype) -> MLLM:
    """A LLaVA-1.5-style model of the given shape with N(0, 0.02) weights and a word-level processor."""
    hf, proc = build_llava(SHAPES[shape], device, dtype)
    hf.generation_config.eos_token_id = None  # random weights: always generate max_new_tokens
    return wrap(hf, proc)


def queries(n: int, size: int = 64) -> tuple[list[Any], list[str]]:
    """n distinct images (the toy world's scenes) and image-grounded questions of varying length."""
    from moras_interp.organisms import tasks

    qs = tasks.harmful_image_queries((n + 1) // 2) + tasks.benign_image_queries(n // 2)
    return [q.image.resize((size, size)) for q in qs[:n]], [q.question for q in qs[:n]]


def alternating(fns: dict[str, tuple[str, Callable[[], Any]]], *, rounds: int, warmup: int,
                device: str) -> dict[str, Measurement]:
    """Median wall time per function over ``rounds`` rounds that run every function once in turn, so load
    changes on a shared machine hit all methods alike (peak memory is not measured: ``peak_extra_bytes=-1``)."""
    for _ in range(warmup):
        for _, fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, (_, fn) in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: Measurement(fns[k][0], statistics.median(v), min(v), -1, rounds) for k, v in times.items()}


def official_style(model: MLLM, proto: UnsafePrototype, cal: Calibration, images: list[Any], questions: list[str],
                   max_new_tokens: int, n: int = 3, gamma: float = 0.3) -> list[str]:
    """The authors' loop: one query at a time; stage-3 answer with ``use_cache=False``."""
    lm_head = model.adapter.module(model.adapter.lm_head)
    answers = []
    for im, q in zip(images, questions):
        ctx = model.generate(model.prepare([im], [CONTEXT_PROMPT]), max_new_tokens=40).texts[0]
        _, st = generate_with_states(model, model.prepare([im], [safety_query(reformulate(ctx, q))]), n)
        r = cal.risk(similarity(st[FINAL], proto.final, lm_head, gamma))
        with interpolate_towards(model, {FINAL: proto.final}, r):
            gen = model.generate(model.prepare([im], [q]), max_new_tokens=max_new_tokens, use_cache=False)
        answers.append(gen.texts[0])
    return answers


def bench_model(name: str, model: MLLM, *, batch_size: int, max_new_tokens: int, repeats: int,
                device: str) -> dict[str, Any]:
    """All measurements on one model; returns the JSON payload (also checks official == MoRAS answers)."""
    proto = UnsafePrototype.build(model, None, 3, progress=False)
    cal = Calibration(0.5, 10.0)
    moras = MoRAS(model, proto, cal)
    ims, qs = queries(batch_size, model.adapter.processor.image_processor.crop_size["height"])
    one_im, one_q = ims[:1], qs[:1]

    def plain(images: list[Any], questions: list[str]) -> Any:
        return model.generate(model.prepare(images, questions), max_new_tokens=max_new_tokens)

    def steered(images: list[Any], questions: list[str]) -> Any:
        with interpolate_towards(model, {FINAL: proto.final}, torch.full((len(questions),), 0.5)):
            return plain(images, questions)

    def run_moras(images: list[Any], questions: list[str]) -> Any:
        return moras.run(images, questions, max_new_tokens=max_new_tokens, batch_size=len(questions), progress=False)

    m = alternating({
        "plain_b1": ("plain, batch 1", lambda: plain(one_im, one_q)),
        "moras_b1": ("MoRAS, batch 1", lambda: run_moras(one_im, one_q)),
        "official_b1": ("official-style, batch 1",
                        lambda: official_style(model, proto, cal, one_im, one_q, max_new_tokens)),
        "plain_bN": (f"plain, batch {batch_size}", lambda: plain(ims, qs)),
        "steered_bN": (f"stage-3 steered generate, batch {batch_size}", lambda: steered(ims, qs)),
        "moras_bN": (f"MoRAS, batch {batch_size}", lambda: run_moras(ims, qs)),
    }, rounds=repeats, warmup=1, device=device)
    n_check = min(len(qs), 4)
    ours = [t.answer for t in run_moras(ims, qs)][:n_check]
    theirs = official_style(model, proto, cal, ims[:n_check], qs[:n_check], max_new_tokens)
    thr = {k: (1 if k.endswith("b1") else batch_size) / v.median_s for k, v in m.items()}
    return {
        "model": name, "model_repr": repr(model), "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "device": device, "torch": torch.__version__, "platform": platform.platform(),
        "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "measurements": m,
        "throughput_qps": thr,
        "ratios": {"moras_bN_vs_official": thr["moras_bN"] / thr["official_b1"],
                   "moras_b1_vs_official_b1": thr["moras_b1"] / thr["official_b1"],
                   "moras_bN_vs_plain_bN": thr["moras_bN"] / thr["plain_bN"],
                   "moras_b1_vs_plain_b1": thr["moras_b1"] / thr["plain_b1"],
                   "steered_vs_plain_bN": thr["steered_bN"] / thr["plain_bN"]},
        "official_answers_equal": sum(a == b for a, b in zip(ours, theirs)) / len(ours),
    }


def markdown(res: dict[str, Any]) -> str:
    """A markdown table of one model's results."""
    m, thr, r = res["measurements"], res["throughput_qps"], res["ratios"]
    rows = [f"| {v.name} | {v.median_s * 1000:.1f} | {thr[k]:.2f} |" for k, v in m.items()]
    return "\n".join([
        f"**{res['model']}** ({res['device']}, {res['threads']} threads, {res['max_new_tokens']} new tokens, "
        f"batch {res['batch_size']})", "", "| method | median ms per call | queries/s |", "|---|---|---|", *rows, "",
        f"MoRAS batch {res['batch_size']} vs official-style loop: **{r['moras_bN_vs_official']:.1f}×** throughput; "
        f"MoRAS vs plain generation: {r['moras_bN_vs_plain_bN']:.2f}× (batch {res['batch_size']}), "
        f"{r['moras_b1_vs_plain_b1']:.2f}× (batch 1); steered vs plain stage-3 generate: "
        f"{r['steered_vs_plain_bN']:.3f}×; official-style answers equal to MoRAS's: "
        f"{res['official_answers_equal']:.0%}.", ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="organism,scaled", help="comma-separated: organism, tiny, scaled, full")
    ap.add_argument("--full", action="store_true", help="LLaVA-1.5-7B shape, bf16, on CUDA")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on CPU: on a shared machine OpenMP spin-waits of oversubscribed "
                         "threads inflate per-op latency up to 10×)")
    a = ap.parse_args(argv)
    names = ["full"] if a.full else [x.strip() for x in a.models.split(",") if x.strip()]
    device = a.device or ("cuda" if a.full else "cpu")
    if a.threads or device == "cpu":
        torch.set_num_threads(a.threads or 1)
    for name in names:
        if name == "organism":
            from moras_interp.models.loading import load_model

            model = load_model("toy-llava", device=device)
            model.hf.generation_config.eos_token_id = None  # equal work: every method generates max_new_tokens
        elif name in SHAPES:
            model = random_llava(name, device, torch.bfloat16 if device.startswith("cuda") else torch.float32)
        else:
            raise SystemExit(f"unknown model {name!r}: use organism, tiny, scaled or full")
        sync(device)
        res = bench_model(name, model, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, repeats=a.repeats,
                          device=device)
        stem = f"moras_{name}_b{a.batch_size}_t{a.max_new_tokens}"
        write_results(Path(a.out) / f"{stem}.json", res)
        md = markdown(res)
        atomic_write_text(Path(a.out) / f"{stem}.md", md)
        print(md)
        print(json.dumps(res["ratios"], indent=1))
        del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
