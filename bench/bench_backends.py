"""Steered decoding on the two execution backends vs plain HF ``generate``, same prompts, same model.

* ``plain``   — HF ``generate`` (greedy, EOS suppressed so every run decodes ``tokens`` steps), no edit.
* ``hooks``   — ``model.generate(..., backend="hooks")`` with risk-adaptive steering (per-example α) at the last
                position of every decoder layer's output, at every step (torch hooks).
* ``nnsight`` — the same installed edits run as one nnsight ``generate`` graph (``backend="nnsight"``, per-step
                ``tracer.iter``).

Ratios per generated token: ``nnsight_vs_hooks`` (goal ≤ 1.10×), ``hooks_vs_plain``, ``nnsight_vs_plain`` from the
medians (``ratios``) and from the fastest rounds (``ratios_min``, robust on a loaded machine), plus the per-round
paired ``nnsight_vs_hooks``; and the per-step Python overhead in ms, (t_backend − t_plain) / decode steps. The two backends must give the same tokens
(checked on every run). Methods alternate in rounds (median over rounds) so load changes on a shared machine hit
all alike; one torch thread on CPU::

    python -m bench.bench_backends                 # CPU: MORAS_SCALED shape, batch 4, 32 tokens
    python -m bench.bench_backends --shape full    # GPU: LLaVA-1.5-7B shape, bf16

``run(shape=..., ...) -> dict`` is the entry point other scripts call (``bench/gpu_suite.py``'s backend section). Writes
``bench/results/backends_<shape>_b<batch>_t<tokens>.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path
from typing import Any

import nnsight
import torch
import transformers

from bench.common import interleaved_times, write_results
from bench.llava_shapes import FULL, MORAS_SCALED, MORAS_TINY, LlavaShape, load_llava
from moras_interp.activations import steer
from moras_interp.models.tiny import tiny_image

SHAPES: dict[str, LlavaShape] = {"tiny": MORAS_TINY, "scaled": MORAS_SCALED, "full": FULL}
RESULTS = Path(__file__).parent / "results"
QUESTIONS = ["what is in the image", "describe the picture", "what is in the picture", "describe the image"]


def run(shape: str | LlavaShape = "scaled", *, batch: int = 4, tokens: int = 32, rounds: int = 5,
        device: str = "cpu", dtype: torch.dtype | None = None, threads: int | None = 1,
        out: str | Path | None = None) -> dict[str, Any]:
    """Measure plain / hooks / nnsight steered decoding; returns the result dict (and writes it to ``out``, default
    ``bench/results/backends_<shape>_b<batch>_t<tokens>.json``; ``out=""`` writes nothing)."""
    name = shape if isinstance(shape, str) else "custom"
    shp = SHAPES[shape] if isinstance(shape, str) else shape
    if threads and torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
    model = load_llava(shp, device, dtype)
    s = shp.image
    images = [tiny_image(s, s, seed=i) for i in range(batch)]
    qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)]
    b = model.prepare(images, qs)
    inputs = dict(b.to(model.device, model.dtype).inputs)
    g = torch.Generator().manual_seed(0)
    direction = {f"blocks.{l}.hook_resid_post": torch.randn(model.d_model, generator=g) * 0.1
                 for l in range(model.n_layers)}
    alpha = torch.linspace(0.5, 2.0, batch)
    eos = model.tokenizer.eos_token_id
    gen_kw = {"min_new_tokens": tokens, "suppress_tokens": [eos]}

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return model.hf.generate(**inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=eos, **gen_kw)

    def steered(backend: str) -> torch.Tensor:
        with steer(model, direction, alpha=alpha, positions="last", layouts=b.layouts):
            return model.generate(b, tokens, backend=backend, **gen_kw).new_tokens

    fns = {"plain": plain, "hooks": lambda: steered("hooks"), "nnsight": lambda: steered("nnsight")}
    first = {k: f() for k, f in fns.items()}  # warm-up (the first nnsight trace compiles its body)
    if not torch.equal(first["hooks"], first["nnsight"]):
        raise AssertionError("the hooks and nnsight backends generated different tokens")
    times = interleaved_times(fns, rounds=rounds, device=device)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    paired = [n / h for n, h in zip(times["nnsight"], times["hooks"])]  # same round: same machine load
    per_tok = {k: v / (batch * tokens) for k, v in med.items()}
    result = {
        "shape": shp.as_dict(), "shape_name": name, "batch": batch, "tokens": tokens, "rounds": rounds,
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "seq_len": int(inputs["input_ids"].shape[1]), "steered_hooks": len(direction),
        "seconds": times, "median_s": med, "per_token_ms": {k: 1e3 * v for k, v in per_tok.items()},
        "ratios": {"nnsight_vs_hooks": med["nnsight"] / med["hooks"], "hooks_vs_plain": med["hooks"] / med["plain"],
                   "nnsight_vs_plain": med["nnsight"] / med["plain"]},
        "ratios_min": {"nnsight_vs_hooks": best["nnsight"] / best["hooks"], "hooks_vs_plain": best["hooks"] / best["plain"],
                       "nnsight_vs_plain": best["nnsight"] / best["plain"]},
        "nnsight_vs_hooks_per_round": paired, "nnsight_vs_hooks_paired_median": statistics.median(paired),
        "per_step_overhead_ms": {k: 1e3 * (med[k] - med["plain"]) / tokens for k in ("hooks", "nnsight")},
        "per_step_overhead_ms_min": {k: 1e3 * (best[k] - best["plain"]) / tokens for k in ("hooks", "nnsight")},
        "same_tokens": True,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "nnsight": nnsight.__version__, "python": platform.python_version()},
        "machine": platform.machine(), "goal": "nnsight_vs_hooks <= 1.10",
    }
    if out != "":
        path = Path(out) if out else RESULTS / f"backends_{name}_b{batch}_t{tokens}.json"
        write_results(path, result)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="scaled")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default=None, help="default: cuda for --shape full, else cpu")
    a = ap.parse_args(argv)
    device = a.device or ("cuda" if a.shape == "full" else "cpu")
    r = run(a.shape, batch=a.batch, tokens=a.tokens, rounds=a.rounds, device=device)
    print("median", {k: round(v, 3) for k, v in r["ratios"].items()}, "min", {k: round(v, 3) for k, v in r["ratios_min"].items()},
          "paired", round(r["nnsight_vs_hooks_paired_median"], 3),
          "overhead ms/step (min)", {k: round(v, 2) for k, v in r["per_step_overhead_ms_min"].items()})


if __name__ == "__main__":
    main()
