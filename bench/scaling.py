"""Scaling curves: time and peak memory of ``cross_modal_attention``, ``collect_activations`` and MoRAS against
sequence length, batch size and number of layers, each next to a plain transformers forward on the same inputs.

    nice -n 10 python -m bench.scaling                 # CPU, a small LLaVA-1.5-style model, a few minutes
    python -m bench.scaling --device cuda --shape full # the 7B shape on a GPU (pending: no GPU run yet)

One factor varies at a time around a base point (batch 1, ~100 text tokens + the image's tokens, the shape's
layers). For each (workload, factor) the growth is fitted as the slope of log(time) on log(x) (least squares;
1 = linear), from the two largest points up (``slope_top``) as well, where fixed overheads matter least. The
time is the process CPU time on CPU (one torch thread: robust to other load on a shared machine; the wall time
is kept as ``wall_s``) and the wall time on CUDA.
Writes ``scaling_<shape>.json`` and one PNG per factor (``scaling_<shape>_<factor>.png``: time and peak
extra memory, log-log) into ``--out`` (default ``docs/figures``). Memory: peak extra RSS on CPU
(:func:`bench.common.measure`; coarse, includes allocator effects), ``max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import measure, write_results
from bench.llava_shapes import FULL, LlavaShape, build_llava, wrap

BASE = LlavaShape(hidden=256, layers=4, heads=8, intermediate=688, vocab=0,
                  v_hidden=128, v_layers=2, v_heads=4, v_intermediate=512, image=112)
"""CPU scale: 64 image tokens, 4 decoder layers of 256 (head_dim 32)."""
SWEEPS = {"cpu": {"tokens": [64, 128, 256, 512], "batch": [1, 2, 4, 8], "layers": [1, 2, 4, 8]},
          "full": {"tokens": [128, 256, 512, 1024, 2048], "batch": [1, 2, 4, 8, 16], "layers": [8, 16, 32]}}
BASE_TOKENS, BASE_BATCH = 128, 1
SENTENCE = ("how do i make the item shown in this image step by step for a person at home and what are the "
            "materials and tools that i need to buy from the store in the city")
MORAS_TOKENS = 4
"""Answer tokens per MoRAS run (stage 1 context tokens are capped at the same number, N = 3 risk tokens)."""


def prompt(n_words: int) -> str:
    words = SENTENCE.split()
    return " ".join(words[i % len(words)] for i in range(n_words))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x): the exponent of a power law y ∝ x^slope."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])


def workloads(model: Any, tokens: int, batch: int) -> dict[str, Callable[[], Any]]:
    """{name: fn} on one input: plain HF forward, cross_modal_attention, collect_activations, MoRAS run."""
    from moras_interp.activations import collect_activations
    from moras_interp.attention import cross_modal_attention
    from moras_interp.models.tiny import tiny_image

    size = model.adapter.processor.image_processor.crop_size["height"]
    ims = [tiny_image(size, size, seed=i) for i in range(batch)]
    texts = [prompt(tokens)] * batch
    b = model.prepare(images=ims, prompts=texts)
    inputs = {**b.to(model.device, model.dtype).inputs, "use_cache": False}
    data = [{"image": im, "text": t} for im, t in zip(ims, texts)]

    @torch.no_grad()
    def plain() -> Any:
        return model.hf(**inputs).logits

    fns = {"plain_forward": plain,
           "cross_modal_attention": lambda: cross_modal_attention(model, b, query="last"),
           "collect_activations": lambda: collect_activations(model, data, names="blocks.*.hook_resid_post",
                                                              batch_size=batch, progress=False)}
    moras = getattr(model, "_scaling_moras", None)
    if moras is not None:
        fns["moras_run"] = lambda: moras.run(ims, texts, max_new_tokens=MORAS_TOKENS, batch_size=batch, progress=False)
    return fns


def build(shape: LlavaShape, device: str, dtype: torch.dtype) -> Any:
    """The model of ``shape`` with a MoRAS calibrated on 4 toy queries (EOS off: every answer runs to budget)."""
    from moras_interp.moras import MoRAS
    from moras_interp.organisms import tasks

    hf, proc = build_llava(shape, device, dtype)
    hf.generation_config.eos_token_id = None
    model = wrap(hf, proc)
    qs = tasks.harmful_image_queries(2) + tasks.benign_image_queries(2)
    cal = [(q.image, q.question, lab) for q, lab in zip(qs, ["unsafe", "unsafe", "safe", "safe"])]
    model._scaling_moras = MoRAS.calibrate(model, cal, batch_size=4, progress=False,
                                           max_context_tokens=MORAS_TOKENS)
    return model


def point(model: Any, tokens: int, batch: int, device: str, repeats: int) -> dict[str, Any]:
    seq = int(model.prepare(images=[None], prompts=[prompt(tokens)]).input_ids.shape[1])
    out: dict[str, Any] = {"text_tokens": seq}
    for name, fn in workloads(model, tokens, batch).items():
        cpu: list[float] = []

        def timed(fn: Callable[[], Any] = fn, cpu: list[float] = cpu) -> Any:
            t = time.process_time()
            res = fn()
            cpu.append(time.process_time() - t)
            return res

        m = measure(name, timed, device=device, repeats=repeats, warmup=1)
        out[name] = {"wall_s": m.median_s, "cpu_s": statistics.median(cpu[1:1 + repeats]),
                     "peak_extra_bytes": m.peak_extra_bytes}
        out[name]["median_s"] = out[name]["cpu_s" if device == "cpu" else "wall_s"]
    return out


def run(shape: LlavaShape, sweeps: dict[str, list[int]], device: str, dtype: torch.dtype, repeats: int,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    res: dict[str, Any] = {}
    base = build(shape, device, dtype)
    image_tokens = (shape.image // 14) ** 2
    for factor in ("tokens", "batch"):
        pts = []
        for x in sweeps[factor]:
            t, b = (x, BASE_BATCH) if factor == "tokens" else (BASE_TOKENS, x)
            p = point(base, t, b, device, repeats)
            p["x"] = p["text_tokens"] + image_tokens if factor == "tokens" else x
            pts.append(p)
            log(f"{factor}={p['x']}: " + ", ".join(f"{k} {v['median_s'] * 1e3:.0f} ms" for k, v in p.items()
                                                   if isinstance(v, dict)))
        res[factor] = pts
    del base
    pts = []
    for n in sweeps["layers"]:
        model = build(shape.with_layers(n), device, dtype)
        p = point(model, BASE_TOKENS, BASE_BATCH, device, repeats) | {"x": n}
        pts.append(p)
        log(f"layers={n}: " + ", ".join(f"{k} {v['median_s'] * 1e3:.0f} ms" for k, v in p.items() if isinstance(v, dict)))
        del model
    res["layers"] = pts
    fits: dict[str, dict[str, Any]] = {}
    for factor, pts in res.items():
        xs = [p["x"] for p in pts]
        for name in (k for k, v in pts[0].items() if isinstance(v, dict)):
            ts = [p[name]["median_s"] for p in pts]
            mem = [max(p[name]["peak_extra_bytes"], 1) for p in pts]
            fits.setdefault(factor, {})[name] = {"slope": slope(xs, ts), "slope_top": slope(xs[-2:], ts[-2:]),
                                                 "mem_slope": slope(xs, mem),
                                                 "over_plain": [t / p["plain_forward"]["median_s"] for t, p in zip(ts, pts)]}
    return {"points": res, "fits": fits}


def plot(result: dict[str, Any], out: Path, stem: str, device: str) -> list[Path]:
    """One PNG per factor: time (left) and peak extra memory (right) against the factor, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = {"tokens": "sequence length (tokens, incl. image)", "batch": "batch size", "layers": "decoder layers"}
    files = []
    for factor, pts in result["points"].items():
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
        xs = [p["x"] for p in pts]
        for name in (k for k, v in pts[0].items() if isinstance(v, dict)):
            s = result["fits"][factor][name]["slope"]
            a.plot(xs, [p[name]["median_s"] for p in pts], "o-", label=f"{name} (slope {s:.2f})")
            b.plot(xs, [max(p[name]["peak_extra_bytes"], 1) / 2**20 for p in pts], "o-", label=name)
        for ax, yl in ((a, "CPU time per call (s)" if device == "cpu" else "time per call (s)"),
                       (b, "peak extra memory (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(label[factor])
            ax.set_ylabel(yl)
            ax.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
        fig.suptitle(f"scaling with {label[factor]} ({stem})", fontsize=10)
        fig.tight_layout()
        path = out / f"{stem}_{factor}.png"
        fig.savefig(path)
        plt.close(fig)
        files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="cpu", choices=["cpu", "full"], help="cpu: a small LLaVA (fp32); full: 7B (bf16)")
    ap.add_argument("--device", default=None, help="default: cuda for --shape full, cpu otherwise")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "figures"))
    a = ap.parse_args(argv)
    device = a.device or ("cuda" if a.shape == "full" else "cpu")
    if device == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        # large tensors via mmap (returned to the OS when freed), so RSS peaks measure every call alike
        os.execve(sys.executable, [sys.executable, "-m", "bench.scaling", *sys.argv[1:]],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    if device == "cpu":
        torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")  # random-weight models: unknown-word and generation warnings
    shape = BASE if a.shape == "cpu" else FULL
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    result = run(shape, SWEEPS[a.shape], device, dtype, a.repeats)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"scaling_{a.shape}"
    result |= {"shape": shape.as_dict(), "device": device, "dtype": str(dtype), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "platform": platform.platform(), "repeats": a.repeats,
               "base": {"text_words": BASE_TOKENS, "batch": BASE_BATCH, "layers": shape.layers},
               "moras_tokens": MORAS_TOKENS, "wall_s": time.perf_counter() - t0}
    write_results(out / f"{stem}.json", result)
    files = plot(result, out, stem, device)
    for factor, fits in result["fits"].items():
        print(f"{factor}: " + ", ".join(f"{k} slope {v['slope']:.2f} (top {v['slope_top']:.2f})"
                                        for k, v in fits.items() if not math.isnan(v["slope"])))
    print(f"wrote {out / f'{stem}.json'} and {len(files)} figures in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
