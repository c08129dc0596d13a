"""Shared helpers of the command-line modules: ``--model`` loading and cheap output-folder checks."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moras_interp.distributed import local_device
from moras_interp.models.mllm import MLLM


def add_model_args(p: argparse.ArgumentParser, default: str = "toy-llava") -> None:
    """Add ``--model``, ``--device``, ``--dtype``, ``--attn`` and ``--backend`` to a sub-command parser."""
    p.add_argument("--model", default=default,
                   help="HF id, local path, shipped organism name (toy-llava) or tiny:<arch> (random weights)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: the CPU; under torchrun cuda = cuda:LOCAL_RANK)")
    p.add_argument("--device-map", default=None, help="e.g. auto: shard over all GPUs with accelerate (not with --device)")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: as transformers loads the checkpoint); "
                        "float16 overflows in MoRAS's steered states: use bfloat16 on a GPU")
    p.add_argument("--attn", default="eager", help="attention implementation (eager is needed for patterns)")
    p.add_argument("--backend", default="hooks", choices=("hooks", "nnsight"),
                   help="how edits and reads run: torch hooks (fast, local) or nnsight intervention graphs (same "
                        "results; also remote)")


def model_from_args(args: argparse.Namespace) -> MLLM:
    """Load the model named by ``args.model`` (see :func:`add_model_args`; names go through the registry)."""
    from moras_interp.models.loading import load_model

    return load_model(args.model, device=local_device(args.device), dtype=args.dtype, attn_implementation=args.attn,
                      device_map=getattr(args, "device_map", None), backend=getattr(args, "backend", None))


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_out_dir(out: str | Path, *, option: str = "--out", may_be_read_only: bool = False,
                  run_info: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Cheap checks of an output folder, run before a model is loaded, so a bad folder fails in a second.

    Raises ``NotADirectoryError`` when ``out`` (or a parent) is a file, ``PermissionError`` when the folder
    (or the parent that would hold it) is not writable, unless ``may_be_read_only`` (a finished folder that
    will only be summarised), and ``ValueError`` when ``out/run.json`` records another value of a field of
    ``run_info`` (unless ``overwrite``). Returns ``Path(out)``; creates nothing.
    """
    path = Path(out).expanduser()
    base = _nearest_existing(path)
    if not base.is_dir():
        where = "is a file" if base == path else f"is under the file {str(base)!r}"
        raise NotADirectoryError(f"{option} {str(out)!r} {where}; give a folder.")
    if not may_be_read_only and not os.access(base, os.W_OK | os.X_OK):
        what = "folder" if base == path else f"parent folder {str(base)!r}"
        raise PermissionError(f"{option} {str(out)!r}: the {what} is not writable; choose another {option}.")
    run_p = path / "run.json"
    if run_info and not overwrite and run_p.is_file():
        try:
            prev = json.loads(run_p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{run_p} is not readable JSON ({e}); use another {option} or delete it.") from None
        if isinstance(prev, dict):
            plain = (str, int, float, bool, type(None))  # richer records (fingerprints) are evaluate's to compare
            diff = [k for k in run_info if k in prev and isinstance(prev[k], plain) and prev[k] != run_info[k]]
            if diff:
                changes = ", ".join(f"{k}: existing {prev[k]!r} ≠ requested {run_info[k]!r}" for k in diff)
                raise ValueError(f"{option} {str(out)!r} holds results of another run ({changes}); use another "
                                 f"{option} folder (or --overwrite where the command has it, to discard them).")
    return path
