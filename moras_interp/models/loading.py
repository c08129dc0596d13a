"""``load_model``: HF id, local path, shipped organism name, or an already-built HF model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moras_interp.models.mllm import MLLM
from moras_interp.models.validate import validate_hooks

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _dtype(d: str | torch.dtype | None) -> torch.dtype | None:
    if d is None or isinstance(d, torch.dtype):
        return d
    if d not in _DTYPES:
        raise ValueError(f"Unknown dtype {d!r}; use one of {sorted(_DTYPES)} or a torch.dtype.")
    return _DTYPES[d]


def _resolve_name(name: str) -> str:
    """Shipped organism names (e.g. ``"toy-llava"``) map to their directory inside the package."""
    try:
        from moras_interp.organisms import ORGANISMS
    except ImportError:  # organisms not built yet
        return name
    return str(ORGANISMS[name]) if name in ORGANISMS else name


def _multimodal(processor: Any) -> bool:
    return getattr(processor, "image_processor", None) is not None and getattr(processor, "tokenizer", None) is not None


def _load_processor(model_id: str, model_type: str, trust_remote_code: bool, kwargs: dict[str, Any]) -> Any:
    """AutoProcessor, or the image + text processor of :mod:`moras_interp.models.processors` when AutoProcessor
    cannot build a multimodal processor (Qwen-VL / InternVL without torchvision, PaliGemma text-only)."""
    from transformers import AutoProcessor

    from moras_interp.models.processors import fallback_processor

    try:
        processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code, **kwargs)
        error: Exception | None = None
    except ImportError as e:
        processor, error = None, e
    if _multimodal(processor) and model_type != "paligemma":
        return processor
    fallback = fallback_processor(model_type, model_id, **kwargs)
    if _multimodal(fallback):
        return fallback
    if _multimodal(processor):
        return processor
    why = f"raised {error}" if error is not None else f"returned a {type(processor).__name__}"
    raise ValueError(
        f"AutoProcessor.from_pretrained({model_id!r}) {why}, not a multimodal processor with an image processor and "
        "a tokenizer (a video processor without torchvision, or a custom processor class). Install the torchvision "
        "release built for your torch (torch 2.13 ↔ torchvision 0.28; an unpinned `pip install torchvision` may "
        "replace torch), or build the processor yourself: load_model(path, processor=MyProcessor.from_pretrained(path)).")


def load_model(model_or_id_or_path: str | Path | torch.nn.Module, *, processor: Any = None,
               device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
               attn_implementation: str | None = "eager", device_map: str | dict | None = None,
               remote: bool | str = False, trust_remote_code: bool = False, validate: bool = True,
               **hf_kwargs: Any) -> MLLM:
    """Load (or wrap) a multimodal model and return an :class:`MLLM`.

    Args:
        model_or_id_or_path: an HF model id, a local directory, a shipped organism name (``"toy-llava"``),
            or an already-built ``*ForConditionalGeneration`` module (then ``processor`` is required).
        processor: the processor; loaded with ``AutoProcessor`` when a name/path is given.
        device, dtype: where/how to place the weights (``dtype`` as torch dtype or "bfloat16" etc.).
        attn_implementation: "eager" (default: attention patterns readable everywhere) or "sdpa" (faster;
            ``cross_modal_attention`` stays exact). ``None`` keeps the model's setting.
        device_map: passed to ``from_pretrained`` (e.g. "auto" with accelerate for multi-GPU).
        remote: passed to every nnsight trace (``True`` for NDIF, ``"local"`` to test serialisation).
        trust_remote_code: only when you trust the checkpoint's code.
        validate: resolve every hook name and check its shape on a tiny input (one forward).
        **hf_kwargs: forwarded to ``from_pretrained`` (e.g. ``revision``, ``local_files_only``).
    """
    if isinstance(model_or_id_or_path, torch.nn.Module):
        hf = model_or_id_or_path
        if processor is None:
            raise ValueError("An already-built model needs its processor: load_model(hf_model, processor=proc).")
        if attn_implementation is not None and hasattr(hf, "set_attn_implementation"):
            hf.set_attn_implementation(attn_implementation)
        model_id = getattr(hf.config, "_name_or_path", None) or type(hf).__name__
    else:
        from transformers import AutoModelForImageTextToText

        model_id = _resolve_name(str(model_or_id_or_path))
        kw: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code, **hf_kwargs}
        if attn_implementation is not None:
            kw["attn_implementation"] = attn_implementation
        if dtype is not None:
            kw["dtype"] = _dtype(dtype)
        if device_map is not None:
            kw["device_map"] = device_map
        elif device is not None:
            kw["device_map"] = str(device)  # load straight onto the device (no full copy in CPU RAM first)
        hf = AutoModelForImageTextToText.from_pretrained(model_id, **kw)
        if processor is None:
            pkw = {k: v for k, v in hf_kwargs.items() if k in ("revision", "local_files_only", "cache_dir", "token")}
            processor = _load_processor(model_id, hf.config.model_type, trust_remote_code, pkw)
    hf.eval()
    if device_map is not None and device is not None:
        raise ValueError("Give either device (one device) or device_map (e.g. 'auto' for several GPUs), not both.")
    if isinstance(model_or_id_or_path, torch.nn.Module) and (device is not None or dtype is not None):
        hf.to(device=device, dtype=_dtype(dtype))
    name = str(model_or_id_or_path) if isinstance(model_or_id_or_path, (str, Path)) else ""
    from moras_interp.organisms import ORGANISMS

    model = MLLM(hf, processor, model_id=name if name in ORGANISMS else str(model_id), remote=remote)
    if validate and not remote:
        model.validated_shapes = validate_hooks(model)
    return model
