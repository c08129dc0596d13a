"""One benchmark command: attention, collection, MoRAS and the execution backends in one run.

    python -m bench.gpu_suite                      # LLaVA-1.5-7B shape, random bf16 weights, one GPU (< 8 min)
    python -m bench.gpu_suite --shape scaled       # end to end on CPU (a scaled-down LLaVA, fp32, ~1-2 min)
    python -m bench.gpu_suite --shape tiny         # seconds (the test's size)

Every section measures our code against plain transformers in the same process, on the same weights and inputs
(the individual scripts, :mod:`bench.bench_attention`, :mod:`bench.bench_collect`, :mod:`bench.bench_moras`,
say exactly what is compared):

* attention: ``cross_modal_attention`` (last-token rows, all layers and heads) vs a plain sdpa forward and vs
  HF eager ``output_attentions=True``; batch 1 and 8 (full) / 1 (otherwise);
* collection: ``collect_activations`` (to disk and in memory) vs a batched HF forward with hidden states;
* MoRAS: the batched pipeline vs the authors' per-query loop and vs plain ``generate`` of the answers;
* backend: steered decoding as one nnsight graph per ``generate`` vs the torch-hook backend vs plain ``generate``
  (:mod:`bench.bench_backends`; the two backends must give the same tokens).

Writes ``gpu_suite_<shape>.json`` and ``.md`` into ``--out`` (default ``bench/results``): device, versions,
shapes, per-section measurements and ratios, and each section's wall time. A section that fails is reported
(with its error) and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import write_results
from bench.llava_shapes import FULL, MORAS_TINY, LlavaShape
from moras_interp.atomic import atomic_write_text

SCALED = LlavaShape(hidden=256, layers=4, heads=8, intermediate=688, vocab=0,
                    v_hidden=128, v_layers=2, v_heads=4, v_intermediate=512, image=168)
"""``--shape scaled``: a LLaVA-1.5-style model small enough to run every section on CPU in a minute or two
(144 image tokens, the tokenizer's vocabulary)."""
SHAPES = {"full": FULL, "scaled": SCALED, "tiny": MORAS_TINY}
PLANS = {  # per shape: attention batches, rounds, repeats; collect n, batch; MoRAS tokens, batch, rounds, authors
    "full": {"attn_batches": [1, 8], "attn_rounds": 3, "attn_repeats": 2, "collect_n": 64, "collect_batch": 8,
             "collect_repeats": 3, "moras_tokens": 32, "moras_batch": 16, "moras_rounds": 2, "moras_authors": 4,
             "backend_batch": 4, "backend_tokens": 32, "backend_rounds": 3},
    "scaled": {"attn_batches": [1], "attn_rounds": 2, "attn_repeats": 2, "collect_n": 8, "collect_batch": 4,
               "collect_repeats": 2, "moras_tokens": 8, "moras_batch": 4, "moras_rounds": 1, "moras_authors": 2,
               "backend_batch": 2, "backend_tokens": 8, "backend_rounds": 2},
    "tiny": {"attn_batches": [1], "attn_rounds": 1, "attn_repeats": 1, "collect_n": 4, "collect_batch": 2,
             "collect_repeats": 1, "moras_tokens": 4, "moras_batch": 2, "moras_rounds": 1, "moras_authors": 2,
             "backend_batch": 1, "backend_tokens": 4, "backend_rounds": 1},
}


def attention_section(shape: LlavaShape, device: str, dtype: torch.dtype, plan: dict[str, Any]) -> dict[str, Any]:
    """``cross_modal_attention`` vs sdpa forward vs eager ``output_attentions`` (see :mod:`bench.bench_attention`)."""
    from bench.bench_attention import PROMPT, alternate, build, ratios, variants
    from moras_interp.attention import cross_modal_attention
    from moras_interp.models.tiny import tiny_image

    model, plain = build(shape, device, dtype)
    out: dict[str, Any] = {}
    for b in plan["attn_batches"]:
        batch = model.prepare(images=[tiny_image(shape.image, shape.image, seed=i) for i in range(b)],
                              prompts=[PROMPT] * b)
        fns = variants(model, plain, batch)
        ours = cross_modal_attention(model, batch, query="last")
        ref = fns["eager_output_attentions"]()
        got = torch.stack([ours.rows[i, :, :, 0][..., batch.layouts[i].image_positions] for i in range(b)])
        m, cpu = alternate(fns, device, plan["attn_rounds"], plan["attn_repeats"])
        out[str(b)] = {"seq_len": int(batch.input_ids.shape[1]), "max_abs_diff_vs_eager": float((got.float() - ref).abs().max()),
                       "measurements": m, "ratios": ratios(m, cpu)}
    del model, plain
    return {"batches": out}


def collect_section(shape: LlavaShape, device: str, dtype: torch.dtype, plan: dict[str, Any]) -> dict[str, Any]:
    """``collect_activations`` vs a batched HF forward with hidden states (see :mod:`bench.bench_collect`)."""
    from bench.bench_collect import run

    args = Namespace(shape=shape, device=device, full=shape == FULL, layers=None, n=plan["collect_n"],
                     batch_size=plan["collect_batch"], shard_size=32, repeats=plan["collect_repeats"],
                     threads=torch.get_num_threads())
    res = run(args)
    res["ratios"] = {f"{k}_throughput_vs_hf": v["throughput_vs_hf"] for k, v in res["results"].items() if k != "hf"}
    return res


def moras_section(shape: LlavaShape, device: str, dtype: torch.dtype, plan: dict[str, Any]) -> dict[str, Any]:
    """Batched MoRAS vs the authors' loop vs plain ``generate`` (see :mod:`bench.bench_moras`)."""
    from bench.bench_moras import Run, bench_run
    from bench.llava_shapes import build_llava, wrap

    hf, proc = build_llava(shape, device, dtype)
    hf.generation_config.eos_token_id = None  # random weights: every answer runs to the budget
    run = Run("suite", plan["moras_tokens"], (plan["moras_batch"],), plan["moras_rounds"], plan["moras_authors"], 0)
    return bench_run(run, wrap(hf, proc), False, device)


def backend_section(shape: LlavaShape, device: str, dtype: torch.dtype, plan: dict[str, Any]) -> dict[str, Any]:
    """Steered decoding on the nnsight backend vs the hooks backend vs plain ``generate``, same tokens checked
    (:func:`bench.bench_backends.run`)."""
    from bench.bench_backends import run

    return run(shape, batch=plan["backend_batch"], tokens=plan["backend_tokens"], rounds=plan["backend_rounds"],
               device=device, dtype=dtype, threads=None, out="")


SECTIONS: dict[str, Callable[[LlavaShape, str, torch.dtype, dict[str, Any]], dict[str, Any]]] = {
    "attention": attention_section, "collect": collect_section, "moras": moras_section, "backend": backend_section}


def environment(device: str) -> dict[str, Any]:
    """Device name, library versions, platform."""
    import nnsight
    import transformers

    import moras_interp

    return {"device": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else
            f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads)",
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "nnsight": getattr(nnsight, "__version__", "?"), "moras_interp": moras_interp.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def headline(name: str, res: dict[str, Any]) -> list[tuple[str, float]]:
    """(ratio name, value) rows of a section for the Markdown summary."""
    if "error" in res or "skipped" in res:
        return []
    if name == "attention":
        return [(f"b{b}: {k}", v) for b, r in res["batches"].items() for k, v in r["ratios"].items()
                if not k.startswith("cpu_time")]
    return [(k, float(v)) for k, v in res.get("ratios", {}).items() if isinstance(v, (int, float))]


def markdown(report: dict[str, Any]) -> str:
    env, lines = report["environment"], []
    lines += [f"# GPU benchmark suite: shape `{report['shape_name']}`", "",
              f"Device: {env['device']}; torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, "
              f"nnsight {env['nnsight']}, moras_interp {env['moras_interp']}; dtype {report['dtype']}; "
              f"total {report['total_s']:.0f} s.", "",
              f"Shape: `{json.dumps(report['shape'])}`", "",
              "Ratios against plain transformers in the same run (time ratios < 1 and throughput ratios > 1 favour "
              "moras_interp; see each bench script's docstring).", "",
              "| section | ratio | value |", "|---|---|---|"]
    for name, res in report["sections"].items():
        rows = headline(name, res)
        if not rows:
            note = res.get("skipped") or f"FAILED: {res.get('error', '').splitlines()[0] if res.get('error') else ''}"
            lines.append(f"| {name} | {note} | |")
        lines += [f"| {name} | {k} | {v:.3f} |" for k, v in rows]
    lines += ["", "| section | wall time (s) |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["section_s"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="full", choices=sorted(SHAPES),
                    help="full = LLaVA-1.5-7B (GPU, bf16); scaled / tiny = small shapes (CPU, fp32)")
    ap.add_argument("--device", default=None, help="default: cuda for --shape full, cpu otherwise")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads on CPU (1: least sensitive to load)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args(argv)
    device = a.device or ("cuda" if a.shape == "full" else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU here: --shape full needs one (use --shape scaled on CPU).")
    names = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad:
        raise SystemExit(f"--sections: unknown {bad}; choose from {','.join(SECTIONS)}")
    if device == "cpu":
        torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    shape, plan = SHAPES[a.shape], PLANS[a.shape]
    report: dict[str, Any] = {"shape_name": a.shape, "shape": shape.as_dict(), "dtype": str(dtype), "plan": plan,
                              "environment": environment(device), "sections": {}, "section_s": {}}
    t_all = time.perf_counter()
    failed = []
    for name in names:
        t0 = time.perf_counter()
        print(f"[gpu_suite] {name} ...", flush=True)
        try:
            report["sections"][name] = SECTIONS[name](shape, device, dtype, plan)
        except Exception as e:  # reported in the JSON; the other sections still run
            report["sections"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            failed.append(name)
        report["section_s"][name] = time.perf_counter() - t0
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    report["total_s"] = time.perf_counter() - t_all
    out = Path(a.out)
    write_results(out / f"gpu_suite_{a.shape}.json", report)
    md = markdown(report)
    atomic_write_text(out / f"gpu_suite_{a.shape}.md", md)
    print(md)
    print(f"wrote {out / f'gpu_suite_{a.shape}.json'} and .md")
    if failed:
        print(f"FAILED sections: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
