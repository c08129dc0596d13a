"""``load_model``: HF id, local path, registered name (organism, ``tiny:<arch>``), or an already-built HF model."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import torch

from moras_interp.models import registry
from moras_interp.models import tiny as _tiny  # noqa: F401  (registers the tiny:<arch> names)
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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""``org/name``: the only shape of a Hub id with a slash (a path with more parts is local)."""


class ModelNotFoundError(OSError):
    """A model name that is neither registered, nor a local directory, nor loadable from the Hugging Face Hub."""


def _looks_like_path(name: str) -> bool:
    """Written as a local path: ``./x``, ``../x``, ``/x``, ``~/x``, several parts, or ``org/name`` whose
    first part exists here (e.g. ``out/model`` with ``out/`` present)."""
    if name.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in name):
        return True
    if "/" in name and not _HUB_ID.match(name):
        return True
    return "/" in name and Path(name.split("/", 1)[0]).expanduser().is_dir()


def _missing_path_message(name: str) -> str:
    """``no such directory``, naming the deepest folder that exists and the closest names inside it."""
    path = Path(name).expanduser()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    first_missing = path.parts[len(parent.parts)] if len(path.parts) > len(parent.parts) else path.name
    hint = ""
    if parent.is_dir():
        try:
            siblings = sorted(p.name for p in parent.iterdir())
        except OSError:
            siblings = []
        close = difflib.get_close_matches(first_missing, siblings, n=3, cutoff=0.6)
        if close:
            hint = " Did you mean " + " or ".join(repr(str(parent / c)) for c in close) + "?"
    return (f"load_model({name!r}): no such directory ({str(parent)!r} exists, {first_missing!r} in it "
            f"does not).{hint}")


def _target(name: str, attn_implementation: str | None) -> registry.Target:
    """What ``name`` means: a registered name's target, an existing local directory, or a Hub id.

    Raises at once (no network) for a missing local path, an unknown ``prefix:`` name, or a near-miss of a
    registered name such as ``"toy-lava"``.
    """
    if registry.is_registered(name):
        return registry.resolve(name, attn_implementation=attn_implementation)
    if Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not path.is_dir():
            raise NotADirectoryError(f"load_model({name!r}): {str(path)!r} is a file; pass the model's folder "
                                     "(the one holding config.json and the safetensors weights).")
        return path
    if _looks_like_path(name):
        raise FileNotFoundError(_missing_path_message(name))
    close = registry.suggest(name)
    if ":" in name or ("/" not in name and close):
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"load_model({name!r}): unknown model name.{hint} Registered names: "
                         f"{', '.join(registry.names())}; otherwise pass a local folder or a Hub id 'org/name'.")
    return name


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


def _check_device(device: str | torch.device | None) -> None:
    """A device this torch build cannot use is a clear error before anything loads (not an assertion deep in
    torch after the weights were read)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device ({e}); use e.g. 'cpu', 'cuda', 'cuda:1'.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: this torch build or machine has no CUDA GPU; use device='cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible.")


def load_model(model_or_id_or_path: str | Path | torch.nn.Module, *, processor: Any = None,
               device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
               attn_implementation: str | None = "eager", device_map: str | dict | None = None,
               remote: bool | str = False, trust_remote_code: bool = False, validate: bool = True,
               backend: str | None = None, **hf_kwargs: Any) -> MLLM:
    """Load (or wrap) a multimodal model and return an :class:`MLLM`.

    Args:
        model_or_id_or_path: an HF model id, a local directory, a registered name (the shipped organism
            ``"toy-llava"``, ``"tiny:<arch>"`` random-weight models; see :mod:`moras_interp.models.registry`),
            or an already-built ``*ForConditionalGeneration`` module (then ``processor`` is required).
        processor: the processor; loaded with ``AutoProcessor`` when a name/path is given.
        device, dtype: where/how to place the weights (``dtype`` as torch dtype or "bfloat16" etc.).
        attn_implementation: "eager" (default: attention patterns readable everywhere) or "sdpa" (faster;
            ``cross_modal_attention`` stays exact). ``None`` keeps the model's setting.
        device_map: passed to ``from_pretrained`` (e.g. "auto" with accelerate for multi-GPU).
        remote: run every forward / generation as an nnsight graph on NDIF (``True``; the model is then built on
            the meta device from its config: no weights are loaded or allocated here, and the id must be a Hub id
            NDIF hosts) or ``"local"`` (serialise each graph as for NDIF and run it here, on local weights: a
            test of remote readiness). See docs/remote.md.
        trust_remote_code: only when you trust the checkpoint's code.
        validate: resolve every hook name and check its shape on a tiny input (one forward).
        backend: the model's default execution backend, "hooks" (torch hooks; the default) or "nnsight" (nnsight
            intervention graphs; the only one with ``remote``).
        **hf_kwargs: forwarded to ``from_pretrained`` (e.g. ``revision``, ``local_files_only``).

    Raises (before any download): ``FileNotFoundError`` for a path that does not exist (with the closest
    names in its folder), ``ValueError`` "did you mean" for a near-miss of a registered name;
    :class:`ModelNotFoundError` (an ``OSError``) when the Hub cannot provide an id.
    """
    _check_device(device)
    target: Any = model_or_id_or_path
    name = str(model_or_id_or_path) if isinstance(model_or_id_or_path, (str, Path)) else ""
    registered = name if registry.is_registered(name) else None
    if isinstance(model_or_id_or_path, (str, Path)):
        target = _target(name, attn_implementation)
        if isinstance(target, tuple):  # a registered builder (tiny:<arch>): (hf_model, processor)
            target, built_processor = target
            processor = processor if processor is not None else built_processor
    if isinstance(target, torch.nn.Module):
        hf = target
        if processor is None:
            raise ValueError("An already-built model needs its processor: load_model(hf_model, processor=proc).")
        if attn_implementation is not None and hasattr(hf, "set_attn_implementation"):
            hf.set_attn_implementation(attn_implementation)
        model_id = registered or getattr(hf.config, "_name_or_path", None) or type(hf).__name__
    elif remote:  # the weights stay on the server: build the architecture on the meta device only
        return _load_meta(name, target, processor, remote, attn_implementation, trust_remote_code, hf_kwargs, backend)
    else:
        from transformers import AutoModelForImageTextToText

        model_id = name  # as given (a path keeps its spelling; ``target`` has ``~`` expanded)
        kw: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code, **hf_kwargs}
        if attn_implementation is not None:
            kw["attn_implementation"] = attn_implementation
        if dtype is not None:
            kw["dtype"] = _dtype(dtype)
        if device_map is not None:
            kw["device_map"] = device_map
        elif device is not None:
            kw["device_map"] = str(device)  # load straight onto the device (no full copy in CPU RAM first)
        try:
            hf = AutoModelForImageTextToText.from_pretrained(str(target), **kw)
        except OSError as e:
            if isinstance(target, Path):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelNotFoundError(
                f"load_model({name!r}): not a registered name ({', '.join(registry.names())}), not a local "
                f"folder, and the Hugging Face Hub could not provide it: {first}") from e
        if processor is None:
            pkw = {k: v for k, v in hf_kwargs.items() if k in ("revision", "local_files_only", "cache_dir", "token")}
            processor = _load_processor(str(target), hf.config.model_type, trust_remote_code, pkw)
    hf.eval()
    if device_map is not None and device is not None:
        raise ValueError("Give either device (one device) or device_map (e.g. 'auto' for several GPUs), not both.")
    if isinstance(target, torch.nn.Module) and (device is not None or dtype is not None):
        hf.to(device=device, dtype=_dtype(dtype))
    model = MLLM(hf, processor, model_id=registered or str(model_id), remote=remote, backend=backend)
    if validate and not remote:
        model.validated_shapes = validate_hooks(model)
    return model


def _load_meta(name: str, target: Any, processor: Any, remote: bool | str, attn_implementation: str | None,
               trust_remote_code: bool, hf_kwargs: dict[str, Any], backend: str | None) -> MLLM:
    """An :class:`MLLM` whose HF model lives on the meta device (shapes and module tree, no weights), wrapped
    by an nnsight ``TransformersModel`` that knows its Hub id, for ``remote=True``."""
    from nnsight import TransformersModel
    from transformers import AutoConfig

    pkw = {k: v for k, v in hf_kwargs.items() if k in ("revision", "local_files_only", "cache_dir", "token")}
    try:
        config = AutoConfig.from_pretrained(str(target), trust_remote_code=trust_remote_code, **pkw)
    except OSError as e:
        raise ModelNotFoundError(f"load_model({name!r}, remote=True): cannot read the model's config ({e}). "
                                 "remote=True needs a Hugging Face Hub id (the config is read locally, the "
                                 "weights stay on NDIF).") from e
    if processor is None:
        processor = _load_processor(str(target), config.model_type, trust_remote_code, pkw)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code, **pkw}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    nn = TransformersModel(str(target), task="image-text-to-text", dispatch=False, processor=processor,
                           tokenizer=processor.tokenizer, **kw)
    return MLLM(nn._module.eval(), processor, model_id=name, remote=remote, nn=nn, backend=backend)
