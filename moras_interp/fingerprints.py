"""Fingerprints of what determines an artefact's content (used by :class:`moras_interp.identity.RunIdentity`).

**Model** (:func:`model_identity`, :func:`model_fingerprint`): the config (``config.to_dict()`` without
path/version/commit fields, canonical JSON), the generation config likewise (EOS ids, pad id, defaults: an
``eos_token_id`` changed in memory counts), the parameter dtype, the attention implementation and the weights:

* loaded from a local folder of ``*.safetensors`` files (the normal case, also for hub downloads resolved
  to a path): per file its size and the whole JSON header (every tensor's name, dtype, shape and byte
  offsets); files up to :data:`~moras_interp.weights_hash.FULL_HASH_BYTES` are hashed completely; larger files contribute, per
  tensor, the first and last 4 KiB block of its bytes and :data:`~moras_interp.weights_hash.BLOCKS_PER_TENSOR` evenly spaced 4 KiB
  blocks in between (read with ``pread``, never the whole file). For a 14 GB LLaVA-1.5-7B (≈700 tensors)
  that reads ≈ 28 MB, under a second, and is cached per (file, size, mtime) for the process.
  What this can miss: an edit confined to bytes between the sampled blocks of a large tensor that keeps
  every dtype, shape and offset (e.g. a few hand-edited values); any retraining, fine-tuning, LoRA merge,
  re-quantisation, dtype or shape change touches the sampled blocks or the header and is seen.
* otherwise (an in-memory model, e.g. ``build_tiny``): every parameter's name, shape and dtype plus all its
  bytes when the model has at most :data:`~moras_interp.weights_hash.FULL_HASH_ELEMENTS` elements, else 64 evenly spaced values
  per tensor (misses edits between those values).

**Processor** (:func:`processor_fingerprint`): the tokenizer's full serialisation (``tokenizer.json`` of a
fast tokenizer, else its vocabulary), special tokens, chat template and padding side, plus the image
processor's and processor's settings. **Data** (:func:`data_fingerprint`): every example's text, label,
region, image bytes (:func:`moras_interp.activations.examples.examples_fingerprint`), id and metadata.
"""


from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from moras_interp import weights_hash
from moras_interp.weights_hash import file_hash, param_state, parameter_hash, weight_files

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM

_DROP_CONFIG = ("_name_or_path", "transformers_version", "_commit_hash", "dtype", "torch_dtype")


def canonical_json(obj: Any) -> str:
    """Sorted, compact JSON; objects that are not JSON become their repr (without memory addresses)."""
    def default(o: Any) -> Any:
        if isinstance(o, (set, frozenset)):
            return sorted(o, key=str)
        if isinstance(o, torch.dtype):
            return str(o)
        r = repr(o)
        return type(o).__qualname__ if " at 0x" in r else r
    return json.dumps(obj, sort_keys=True, default=default, ensure_ascii=False, separators=(",", ":"))


def sha256_json(obj: Any) -> str:
    """sha256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


# ---- model ----------------------------------------------------------------------------------------------
def _strip_config(d: Any) -> Any:
    """The config dict without paths, versions and dtypes (at every nesting level)."""
    if isinstance(d, dict):
        return {k: _strip_config(v) for k, v in d.items() if k not in _DROP_CONFIG}
    return d


def model_identity(model: MLLM) -> dict[str, str]:
    """{"config", "weights", "weights_source", "dtype", "attn", "class", "generation_config"}: what
    :func:`model_fingerprint` hashes (the config and the generation config — EOS ids, pad id, defaults — without
    paths, versions and dtypes; the dtype is its own field)."""
    cfg = _strip_config(model.hf.config.to_dict())
    files = weight_files(model)
    if files and param_state(model.hf) != getattr(model, "loaded_param_state", None):
        weights, source = parameter_hash(model)  # edited in memory since load: the files no longer describe it
        source += ", changed in memory since load"
    elif files:
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}:{file_hash(f)}".encode())
        big = any(f.stat().st_size > weights_hash.FULL_HASH_BYTES for f in files)
        weights, source = h.hexdigest(), f"{len(files)} safetensors file(s), {'sampled' if big else 'all bytes'}"
    else:
        weights, source = parameter_hash(model)
    gen = getattr(model.hf, "generation_config", None)   # eos_token_id etc.: edited in memory, it changes answers
    gen_d = _strip_config(gen.to_dict()) if gen is not None and hasattr(gen, "to_dict") else None
    return {"class": type(model.hf).__name__, "config": sha256_json(cfg), "weights": weights,
            "weights_source": source, "dtype": str(model.dtype).removeprefix("torch."),
            "attn": str(getattr(model, "attn_implementation", "")), "generation_config": sha256_json(gen_d)}


def model_fingerprint(model: MLLM) -> str:
    """sha256 (hex) over :func:`model_identity` minus its descriptive ``weights_source``: another checkpoint,
    new weights at the same path, another config, generation config (e.g. ``eos_token_id`` changed in memory),
    dtype or attention implementation give another value."""
    ident = model_identity(model)
    ident.pop("weights_source")
    return sha256_json(ident)


def weights_fingerprint(model: MLLM) -> str:
    """sha256 (hex) over the model class, config and weights only (not the load dtype or attention
    implementation): what an unsafe prototype or calibration is tied to."""
    ident = model_identity(model)
    return sha256_json({k: ident[k] for k in ("class", "config", "weights")})


def processor_fingerprint(processor: Any) -> str:
    """sha256 (hex) over the tokenizer (full serialisation, special tokens, chat template, padding side) and
    the processor's / image processor's settings."""
    tok = getattr(processor, "tokenizer", processor)
    backend = getattr(tok, "backend_tokenizer", None)
    parts: dict[str, Any] = {"class": type(processor).__name__, "tokenizer_class": type(tok).__name__}
    try:
        parts["tokenizer"] = hashlib.sha256(backend.to_str().encode()).hexdigest() if backend is not None \
            else sha256_json(sorted(tok.get_vocab().items()))
    except Exception:  # a tokenizer without a serialisation: fall back to the vocabulary
        parts["tokenizer"] = sha256_json(sorted(tok.get_vocab().items()))
    parts["special"] = getattr(tok, "special_tokens_map", None)
    parts["added"] = sorted(str(t) for t in getattr(tok, "added_tokens_decoder", {}).values())
    parts["chat_template"] = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
    parts["padding_side"] = getattr(tok, "padding_side", None)
    image_proc = getattr(processor, "image_processor", None)
    if image_proc is not None and hasattr(image_proc, "to_dict"):
        parts["image_processor"] = image_proc.to_dict()
    for attr in ("patch_size", "num_additional_image_tokens", "vision_feature_select_strategy", "image_seq_length"):
        parts[attr] = getattr(processor, attr, None)
    return sha256_json(parts)


# ---- data -----------------------------------------------------------------------------------------------
def data_fingerprint(examples: Iterable[Any]) -> str:
    """sha256 (hex) over every example's text, label, region, image content (file bytes or pixels), id and
    ``meta`` (gold answers), in order. Examples: anything :func:`moras_interp.activations.examples.
    normalise_dataset` accepts, or (image, text, label) tuples."""
    from moras_interp.activations.examples import examples_fingerprint, normalise_dataset
    from moras_interp.activations.store import dataset_fingerprint

    items = [dict(zip(("image", "text", "label"), it)) if isinstance(it, (tuple, list)) else it for it in examples]
    extra = [canonical_json({"id": getattr(it, "id", None), "meta": getattr(it, "meta", None)}) for it in items]
    return dataset_fingerprint([examples_fingerprint(normalise_dataset(items)), *extra])


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor], *extra: Any) -> str:
    """sha256 (hex) over named tensors (name, dtype, shape, bytes) and any JSON-able ``extra``."""
    h = hashlib.sha256(canonical_json(list(extra)).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def package_version() -> str:
    from moras_interp._version import __version__

    return __version__


__all__ = ["canonical_json", "data_fingerprint", "model_fingerprint", "model_identity", "package_version",
           "processor_fingerprint", "sha256_json", "tensors_fingerprint", "weight_files", "weights_fingerprint"]
