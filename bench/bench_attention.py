"""Cost of getting text→image attention: ``cross_modal_attention`` vs HF eager ``output_attentions=True`` vs a
plain sdpa forward, on a LLaVA-1.5-7B-shaped model (random weights), one 336×336 image, ~40 text tokens.

Variants (same weights, same inputs, all without KV cache; plain/eager run on an unwrapped copy of the model):

* ``sdpa_forward``: ``hf(**inputs)`` with sdpa attention (the reference: what a forward costs anyway);
* ``eager_output_attentions``: eager attention, ``output_attentions=True``, then the last row's image columns;
* ``cross_modal_attention``: ours, sdpa model, ``query="last"`` (all layers and heads);
* ``cross_modal_attention_instr``: ours with every instruction token as a query row.

Runs alternate between variants (round r of every variant, then round r + 1: load drift hits all alike);
times are medians, memory is the peak extra over the allocation before the call (CUDA:
``max_memory_allocated``; CPU: sampled RSS, with ``MALLOC_MMAP_THRESHOLD_`` fixed so freed tensors leave the
process). Default: a scaled-down config on CPU. ``--full``: the real 7B shape (Llama 32×4096, CLIP
ViT-L/14-336 with 24 layers, bf16, N(0, 0.02) weights) on the GPU, batch 1 and 8. Results are written
atomically to ``bench/results/attention_<cpu|full>.json`` after each batch size; finished batch sizes of
the same configuration are skipped on a re-run (``--force`` re-measures).

    python bench/bench_attention.py            # CPU, a few minutes on 2 cores
    python bench/bench_attention.py --full     # GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measurement, measure, write_results
from bench.llava_shapes import ATTENTION_CPU, FULL, LlavaShape, build_llava, wrap
from moras_interp import MLLM
from moras_interp.attention import cross_modal_attention
from moras_interp.models.batch import Batch
from moras_interp.models.tiny import tiny_image

SMALL: LlavaShape = ATTENTION_CPU  # CPU scale: 32 heads as in 7B (head_dim 32), 8 layers, 2048-word vocabulary
PROMPT = ("how do i make the item shown in this image step by step for a person at home , and what are the "
          "materials and tools that i need to buy from the store in the city to do it ?")


def build(shape: LlavaShape, device: str, dtype: torch.dtype) -> tuple[MLLM, torch.nn.Module]:
    """(our wrapped sdpa model, an unwrapped copy with the same weights) of a LLaVA-1.5-style ``shape``."""
    hf, proc = build_llava(shape, device, dtype)
    plain = copy.deepcopy(hf)
    return wrap(hf, proc), plain


def variants(model: MLLM, plain: torch.nn.Module, batch: Batch) -> dict[str, Callable[[], Any]]:
    inputs = {**batch.to(model.device, model.dtype).inputs, "use_cache": False}  # a prefill without KV cache
    last = [l.last for l in batch.layouts]
    img = [l.image_positions for l in batch.layouts]

    @torch.no_grad()
    def sdpa_forward() -> Any:
        return plain(**inputs).logits

    @torch.no_grad()
    def eager_dump() -> Any:
        plain.set_attn_implementation("eager")
        try:
            att = plain(**inputs, output_attentions=True).attentions
            return torch.stack([torch.stack([a[i, :, last[i]][:, img[i]] for i in range(len(last))]) for a in att],
                               1).float().cpu()  # [b, L, H, V]
        finally:
            plain.set_attn_implementation("sdpa")

    return {"sdpa_forward": sdpa_forward, "eager_output_attentions": eager_dump,
            "cross_modal_attention": lambda: cross_modal_attention(model, batch, query="last"),
            "cross_modal_attention_instr": lambda: cross_modal_attention(model, batch, query="instruction")}


def _cpu_timed(fn: Callable[[], Any], sink: list[float]) -> Callable[[], Any]:
    """``fn`` that also records its process CPU time (all threads): robust to other processes' load."""
    def run() -> Any:
        t = time.process_time()
        out = fn()
        sink.append(time.process_time() - t)
        return out
    return run


def alternate(fns: dict[str, Callable[[], Any]], device: str, rounds: int,
              repeats: int) -> tuple[dict[str, Measurement], dict[str, float]]:
    """Warm every variant up, then ``rounds`` rounds of ``measure`` over all variants in turn.

    Returns (medians of wall time and peak extra memory, median process CPU seconds per call).
    """
    for fn in fns.values():
        fn()
    per: dict[str, list[Measurement]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in tqdm(range(rounds), desc="rounds", leave=False):
        for k, fn in fns.items():
            per[k].append(measure(k, _cpu_timed(fn, cpu[k]), device=device, repeats=repeats, warmup=0))
    return ({k: Measurement(k, statistics.median(m.median_s for m in ms), min(m.min_s for m in ms),
                            int(statistics.median(m.peak_extra_bytes for m in ms)), repeats * rounds)
             for k, ms in per.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def ratios(m: dict[str, Measurement], cpu: dict[str, float]) -> dict[str, float]:
    """Time and memory ratios; ``cpu_time_*`` use process CPU time (only meaningful on a CPU device)."""
    sd, ea, ours = m["sdpa_forward"], m["eager_output_attentions"], m["cross_modal_attention"]
    return {"cpu_time_ours_over_sdpa": cpu["cross_modal_attention"] / cpu["sdpa_forward"],
            "cpu_time_eager_over_sdpa": cpu["eager_output_attentions"] / cpu["sdpa_forward"],
            "cpu_time_instr_over_sdpa": cpu["cross_modal_attention_instr"] / cpu["sdpa_forward"],
            "time_ours_over_sdpa": ours.median_s / sd.median_s, "time_eager_over_sdpa": ea.median_s / sd.median_s,
            "time_instr_over_sdpa": m["cross_modal_attention_instr"].median_s / sd.median_s,
            "mem_ours_over_eager": ours.peak_extra_bytes / max(ea.peak_extra_bytes, 1),
            "mem_eager_over_sdpa": ea.peak_extra_bytes / max(sd.peak_extra_bytes, 1),
            "mem_ours_over_sdpa": ours.peak_extra_bytes / max(sd.peak_extra_bytes, 1),
            "attn_extra_ours_over_eager": max(ours.peak_extra_bytes - sd.peak_extra_bytes, 0)
            / max(ea.peak_extra_bytes - sd.peak_extra_bytes, 1)}


def table(results: dict[str, Any]) -> str:
    """Markdown table: per batch size, time and peak extra memory of every variant, with ratios."""
    cpu_dev = results["config"]["device"] == "cpu"
    lines = ["| batch | variant | median wall time | × sdpa | " + ("CPU time × sdpa | " if cpu_dev else "")
             + "peak extra MiB | × eager-dump memory |", "|---|---|---|---|" + ("---|" if cpu_dev else "") + "---|---|"]
    for b, r in sorted(results["batches"].items(), key=lambda kv: int(kv[0])):
        m, c = r["measurements"], r["cpu_time_s"]
        sd, ea = m["sdpa_forward"], m["eager_output_attentions"]
        for k, v in m.items():
            lines.append(f"| {b} | {k} | {v['median_s'] * 1e3:.0f} ms | {v['median_s'] / sd['median_s']:.3f} | "
                         + (f"{c[k] / c['sdpa_forward']:.3f} | " if cpu_dev else "")
                         + f"{v['peak_extra_bytes'] / 2**20:.1f} | "
                         f"{v['peak_extra_bytes'] / max(ea['peak_extra_bytes'], 1):.3f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = (FULL if args.full else SMALL).with_layers(args.layers)
    device = args.device or ("cuda" if args.full else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU here: run without --full (scaled-down CPU config) or pass --device cpu.")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if device == "cpu":
        torch.set_num_threads(args.threads)
    out = Path(args.out or Path(__file__).parent / "results" / f"attention_{'full' if args.full else 'cpu'}.json")
    config = {"shape": shape.as_dict(), "device": device, "dtype": str(dtype), "prompt_words": len(PROMPT.split()),
              "rounds": args.rounds, "repeats": args.repeats, "threads": torch.get_num_threads()}
    results: dict[str, Any] = {"config": config, "batches": {}}
    if out.exists() and not args.force:
        old = json.loads(out.read_text())
        if old.get("config") == config:
            results = old
    model, plain = build(shape, device, dtype)
    for b in args.batch:
        if str(b) in results["batches"]:
            print(f"batch {b}: already measured in {out} (use --force to re-measure)")
            continue
        batch = model.prepare(images=[tiny_image(shape.image, shape.image, seed=i) for i in range(b)],
                              prompts=[PROMPT] * b)
        fns = variants(model, plain, batch)
        ours = cross_modal_attention(model, batch, query="last")
        ref = fns["eager_output_attentions"]()
        ours_img = torch.stack([ours.rows[i, :, :, 0][..., batch.layouts[i].image_positions] for i in range(b)])
        err = float((ours_img - ref).abs().max())
        m, cpu = alternate(fns, device, args.rounds, args.repeats)
        results["batches"][str(b)] = {"seq_len": int(batch.input_ids.shape[1]),
                                      "image_tokens": int(batch.layouts[0].image_positions.numel()),
                                      "max_abs_diff_vs_eager": err, "measurements": m, "cpu_time_s": cpu,
                                      "ratios": ratios(m, cpu)}
        results["env"] = {"torch": torch.__version__, "python": platform.python_version(),
                          "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()}
        write_results(out, results)
    results = json.loads(out.read_text())
    print(table(results))
    for b, r in results["batches"].items():
        rt = r["ratios"]
        print(f"batch {b}: seq {r['seq_len']} ({r['image_tokens']} image tokens), max|ours - eager| = "
              f"{r['max_abs_diff_vs_eager']:.1e}; ours/sdpa time {rt['time_ours_over_sdpa']:.3f} (goal ≤ 1.15; "
              f"CPU time {rt['cpu_time_ours_over_sdpa']:.3f}), "
              f"ours/eager-dump peak memory {rt['mem_ours_over_eager']:.3f} (goal ≤ 0.05)")
    print(f"wrote {out}")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the real LLaVA-1.5-7B shape (GPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda with --full, else cpu)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default: 1; --full: 1 8)")
    p.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: least sensitive to other load)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/attention_<cpu|full>.json)")
    p.add_argument("--force", action="store_true", help="re-measure batch sizes already in the JSON")
    args = p.parse_args(argv)
    args.batch = args.batch or ([1, 8] if args.full else [1])
    cpu = (args.device or ("cuda" if args.full else "cpu")) == "cpu"
    if cpu and os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        # large tensors via mmap (returned to the OS when freed), so RSS peaks measure every call alike
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
