"""Shared helpers of the command-line modules: loading a model from ``--model``."""

from __future__ import annotations

import argparse

from moras_interp.models.mllm import MLLM


def add_model_args(p: argparse.ArgumentParser, default: str = "toy-llava") -> None:
    """Add ``--model``, ``--device``, ``--dtype`` and ``--attn`` to a sub-command parser."""
    p.add_argument("--model", default=default,
                   help="HF id, local path, shipped organism name (toy-llava) or tiny:<arch> (random weights)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: the CPU)")
    p.add_argument("--device-map", default=None, help="e.g. auto: shard over all GPUs with accelerate (not with --device)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    p.add_argument("--attn", default="eager", help="attention implementation (eager is needed for patterns)")


def model_from_args(args: argparse.Namespace) -> MLLM:
    """Load the model named by ``args.model`` (see :func:`add_model_args`)."""
    from moras_interp.models.loading import load_model

    name: str = args.model
    if name.startswith("tiny:"):
        from moras_interp.models.tiny import build_tiny

        hf, proc = build_tiny(name.split(":", 1)[1], attn_implementation=args.attn)
        return load_model(hf, processor=proc)
    return load_model(name, device=args.device, dtype=args.dtype, attn_implementation=args.attn,
                      device_map=getattr(args, "device_map", None))
