"""Collection throughput: ``collect_activations`` vs a plain batched HF forward with ``output_hidden_states``.

Both sides see the same examples (image + question, varied lengths, left padding), the same batches and
the same model, and both end with the last-position residual stream of every layer on the CPU:

* ``hf``: rendered prompts -> processor -> ``hf(**inputs, output_hidden_states=True)`` -> gather -> cpu;
* ``hf_keep1``: the same with ``logits_to_keep=1`` (the logits of the last position only);
* ``collect_disk``: ``collect_activations(..., out=<fresh dir>)`` (fingerprints, layouts, atomic shards);
* ``collect_mem``: ``collect_activations(..., out=None)``;
* ``collect_mem_layer0_only``: layer 0 only (not the same work: shows the early stop after the last hook).

Runs alternate between the variants (repeat r of every variant, then repeat r + 1), medians are reported
as examples/s and as ratios to ``hf`` (goal ≥ 0.9×). Default: a scaled-down LLaVA on CPU; ``--full`` builds
the LLaVA-1.5-7B shape (CLIP ViT-L/14-336 + Llama 32×4096, bf16, random N(0, 0.02) weights) on the GPU.

    python bench/bench_collect.py                 # CPU, ~1-2 min
    python bench/bench_collect.py --full          # GPU
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import interleaved_times, write_results
from bench.llava_shapes import COLLECT_CPU, FULL, LlavaShape, load_llava
from moras_interp import MLLM
from moras_interp.activations import collect_activations
from moras_interp.models.tiny import tiny_image

QUESTIONS = ["what is in the image", "describe the picture please", "how do i make the item in this image",
             "is this safe to use for a person", "tell me about the red car and the man", "what color is the cat"]

SMALL: LlavaShape = COLLECT_CPU  # 384 hidden × 4 layers, full 7B vocabulary, 224 px


def examples(n: int, size: int) -> list[dict[str, Any]]:
    """Image + question examples with varied question lengths (so batches are left-padded)."""
    return [{"text": " ".join([QUESTIONS[i % len(QUESTIONS)]] + [f"w{j}" for j in range(i % 5 * 3)]),
             "image": tiny_image(size, size, seed=i), "label": "unsafe" if i % 2 else "safe"} for i in range(n)]


def hf_loop(model: MLLM, data: list[dict[str, Any]], batch_size: int, keep1: bool) -> torch.Tensor:
    """Plain HF: processor + forward(output_hidden_states) per batch; last-position states [L, n, d] on CPU."""
    proc, hf = model.processor, model.hf
    proc.tokenizer.padding_side = "left"
    kw: dict[str, Any] = {"output_hidden_states": True, "use_cache": False}
    if keep1:
        kw["logits_to_keep"] = 1
    outs = []
    for s in range(0, len(data), batch_size):
        chunk = data[s:s + batch_size]
        texts = [proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                 {"type": "text", "text": ex["text"]}]}], add_generation_prompt=True, tokenize=False) for ex in chunk]
        enc = proc(text=texts, images=[ex["image"] for ex in chunk], padding=True, return_tensors="pt")
        enc = {k: v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            hs = hf(**enc, **kw).hidden_states
        outs.append(torch.stack([h[:, -1] for h in hs[1:]]).to("cpu", torch.float32))
    return torch.cat(outs, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = (getattr(args, "shape", None) or (FULL if args.full else SMALL)).with_layers(args.layers)
    device = getattr(args, "device", None) or ("cuda" if args.full else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--full needs a CUDA GPU (the 7B shape in bf16 needs ~15 GiB).")
    if device == "cpu":
        torch.set_num_threads(args.threads)
    model = load_llava(shape, device, dtype)
    data = examples(args.n, shape.image)
    names = "blocks.*.hook_resid_post"
    tmp_dir = tempfile.TemporaryDirectory(prefix="bench_collect_")      # removed when run() returns
    tmp = Path(tmp_dir.name)
    counter = iter(range(10**6))

    def collect(out: Path | None, hooks: str = names) -> Any:
        return collect_activations(model, data, names=hooks, positions="last", batch_size=args.batch_size,
                                   out=out, progress=False, shard_size=args.shard_size)

    variants: dict[str, Callable[[], Any]] = {
        "hf": lambda: hf_loop(model, data, args.batch_size, keep1=False),
        "hf_keep1": lambda: hf_loop(model, data, args.batch_size, keep1=True),
        "collect_disk": lambda: collect(tmp / f"run{next(counter)}"),
        "collect_mem": lambda: collect(None),
        "collect_mem_layer0_only": lambda: collect(None, "blocks.0.hook_resid_post"),
    }
    ref = hf_loop(model, data, args.batch_size, keep1=False)
    store = collect(None)
    got = torch.stack([store.load(f"blocks.{l}.hook_resid_post").float() for l in range(shape.layers)])
    # HF's last hidden state is after the final norm; compare the layers before it
    max_diff = float((got[:-1] - ref[:-1]).abs().max()) if shape.layers > 1 else 0.0
    for fn in variants.values():                                # warm-up
        fn()
    times = interleaved_times(variants, rounds=args.repeats, device=device)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    rows = {k: {"median_s": med[k], "min_s": best[k], "times_s": times[k], "examples_per_s": args.n / med[k],
                "throughput_vs_hf": med["hf"] / med[k], "throughput_vs_hf_keep1": med["hf_keep1"] / med[k],
                "throughput_vs_hf_min": best["hf"] / best[k], "throughput_vs_hf_keep1_min": best["hf_keep1"] / best[k]}
            for k in variants}
    tmp_dir.cleanup()
    seq = model.prepare([data[0]["image"]], [data[0]["text"]]).input_ids.shape[1]
    return {"setting": "full (LLaVA-1.5-7B shape, GPU, bf16)" if args.full else "scaled-down LLaVA (CPU, fp32)",
            "shape": shape.as_dict(), "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else device,
            "threads": torch.get_num_threads(), "n_examples": args.n, "batch_size": args.batch_size,
            "shard_size": args.shard_size, "seq_len_first_example": seq, "repeats": args.repeats,
            "max_abs_diff_vs_hf": max_diff, "results": rows, "torch": torch.__version__,
            "python": platform.python_version()}


def table(res: dict[str, Any]) -> str:
    lines = [f"{res['setting']}: {res['n_examples']} examples, batch {res['batch_size']}, "
             f"~{res['seq_len_first_example']} tokens, {res['threads']} threads; max |collected − HF| = "
             f"{res['max_abs_diff_vs_hf']:.1e}", "",
             "| variant | median s | min s | examples/s | × plain HF (median / min) | × HF logits_to_keep=1 (median / min) |",
             "|---|---|---|---|---|---|"]
    for k, r in res["results"].items():
        lines.append(f"| {k} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['examples_per_s']:.1f} | "
                     f"{r['throughput_vs_hf']:.2f} / {r['throughput_vs_hf_min']:.2f} | "
                     f"{r['throughput_vs_hf_keep1']:.2f} / {r['throughput_vs_hf_keep1_min']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="LLaVA-1.5-7B shape on the GPU (bf16)")
    p.add_argument("--n", type=int, default=None, help="examples (default 16 CPU / 64 GPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default 4 CPU / 8 GPU")
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: less sensitive to other load)")
    p.add_argument("--layers", type=int, default=None, help="override the number of text layers")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/collect[_full].json)")
    args = p.parse_args(argv)
    args.n = args.n or (64 if args.full else 16)
    args.batch_size = args.batch_size or (8 if args.full else 4)
    res = run(args)
    out = args.out or Path(__file__).parent / "results" / ("collect_full.json" if args.full else "collect.json")
    write_results(out, res)
    print(table(res))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
