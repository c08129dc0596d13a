"""Collect activations of a dataset at named hooks, batched, to a resumable on-disk store.

    store = collect_activations(model, examples, names="blocks.*.hook_resid_post", positions="last",
                                batch_size=8, out="runs/resid_last")
    x = store.load("blocks.10.hook_resid_post")                     # [n, d]

Each example is reduced to one vector per hook: ``"last"`` (the last prompt position), ``"instruction_mean"``
(mean over the instruction's tokens), ``"image_mean"`` (mean over the image tokens) or a function
``fn(value [b, pos, ...], layouts) -> [b, ...]``. Batches are left-padded by ``model.prepare``; text-only
and image examples go into separate batches (so architectures whose processors cannot mix them work).

Values are read with plain torch hooks on the modules behind the canonical names (``backend="hooks"``, the
default: no per-trace overhead) or in one nnsight trace per batch (``backend="nnsight"``), after any edit installed with ``model.hooks`` (the edited value is collected); the forward stops as soon as the last requested hook has fired, and the logits are
computed for the last position only unless ``hook_logits`` is requested. Shards of ``shard_size`` examples
are written atomically (see :class:`ActivationStore`), so a killed run resumes where it stopped; reopening
with another model (weights fingerprint), processor, dataset, hooks, positions, dtype, shard size or prompt
format is refused, and a second process collecting into the same folder gets a clear error (folder lock).
Under ``torchrun`` the ranks share the shards of one store (:mod:`moras_interp.activations.collect_dist`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from moras_interp import distributed
from moras_interp.activations.examples import (
    CollectExample,
    examples_fingerprint,
    label_names,
    normalise_dataset,
)
from moras_interp.activations.store import ActivationStore
from moras_interp.atomic import folder_lock
from moras_interp.callable_identity import callable_identity
from moras_interp.identity import model_fingerprint, processor_fingerprint
from moras_interp.models.finite import check_finite
from moras_interp.models.hooks import expand_names
from moras_interp.models.interventions import HookContext, installed_edits
from moras_interp.models.layout import TokenLayout
from moras_interp.progress import tqdm

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM

PositionFn = Callable[[torch.Tensor, list[TokenLayout]], torch.Tensor]
POSITION_MODES = ("last", "instruction_mean", "image_mean")
ShardCallback = Callable[[int, ActivationStore], None]


class _Stop(Exception):
    """Raised from the last capture hook to skip the rest of the forward."""


def _positions_id(positions: str | PositionFn) -> str:
    if isinstance(positions, str):
        if positions not in POSITION_MODES:
            raise ValueError(f"positions={positions!r}: use one of {list(POSITION_MODES)} or a function "
                             "fn(value [b, pos, ...], layouts) -> [b, ...].")
        return positions
    if not callable(positions):
        raise TypeError(f"positions must be a string or a callable, got {type(positions).__name__}.")
    name = getattr(positions, "__qualname__", type(positions).__qualname__)
    return f"fn:{getattr(positions, '__module__', '?')}.{name}"


def _check_hooks(model: MLLM, names: str | Sequence[str], positions: str | PositionFn) -> list[str]:
    if isinstance(names, str):
        names = [names]
    hooks = expand_names(list(names), model.hook_names())
    for n in hooks:
        p = model.hook_point(n)
        if n.endswith("attn.hook_pattern"):
            raise ValueError(f"{n}: attention patterns cannot be collected here; use "
                             "moras_interp.cross_modal_attention for exact attention rows.")
        if isinstance(positions, str) and not p.shape.startswith("[b, pos"):
            raise ValueError(f"{n} has shape {p.shape}, not [b, pos, ...]: positions={positions!r} only applies "
                             "to language-model hooks. Pass positions=fn(value, layouts) to reduce it yourself.")
    return hooks


def _check_layouts(examples: list[CollectExample], layouts: list[TokenLayout], positions: str | PositionFn) -> None:
    for ex, lay in zip(examples, layouts):
        if positions == "image_mean" and lay.image_positions.numel() == 0:
            raise ValueError(f"{ex.describe()}: positions='image_mean' needs an image in every example. "
                             "Use positions='last' or 'instruction_mean', or leave text-only examples out.")
        if positions == "instruction_mean" and lay.instruction.numel() == 0:
            raise ValueError(f"{ex.describe()}: its instruction tokens were not found in the prompt, so "
                             "positions='instruction_mean' is undefined. Use positions='last'.")


def reduce_positions(value: torch.Tensor, layouts: list[TokenLayout], positions: str | PositionFn) -> torch.Tensor:
    """[b, pos, ...] -> [b, ...] for one of ``POSITION_MODES`` (means in float32) or a custom function."""
    b = value.shape[0]
    if not isinstance(positions, str):
        out = positions(value, layouts)
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != b:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the positions function must return a tensor [b={b}, ...], got {got}.")
        return out
    if positions == "last":
        idx = torch.tensor([lay.last for lay in layouts], device=value.device)
        return value[torch.arange(b, device=value.device), idx]
    key = "image_positions" if positions == "image_mean" else "instruction"
    return torch.stack([value[i, getattr(lay, key).to(value.device)].float().mean(0) for i, lay in enumerate(layouts)])


def _batches(examples: list[CollectExample], batch_size: int) -> Iterable[list[CollectExample]]:
    """Examples grouped by kind (number of images, in order of first appearance), chunked to batch_size."""
    groups: dict[int, list[CollectExample]] = {}
    for ex in examples:
        groups.setdefault(len(ex.images), []).append(ex)
    for group in groups.values():
        for s in range(0, len(group), batch_size):
            yield group[s:s + batch_size]


def _forward_capture(model: MLLM, batch: Any, hooks: list[str], positions: str | PositionFn,
                     backend: str = "hooks") -> dict[str, torch.Tensor]:
    """One forward of ``batch``; {hook: reduced value [b, ...] on CPU}."""
    got: dict[str, torch.Tensor] = {}

    def make(name: str) -> Callable[[torch.Tensor, HookContext], None]:
        def fn(value: torch.Tensor, ctx: HookContext) -> None:
            got[name] = reduce_positions(value, batch.layouts, positions).detach()
            if len(got) == len(hooks):
                raise _Stop
        return fn

    inputs = dict(batch.to(model.device, model.dtype).inputs)
    kwargs: dict[str, Any] = {"use_cache": False}
    params = inspect.signature(model.hf.forward).parameters
    if "hook_logits" not in hooks and "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    try:
        with torch.no_grad(), model.hooks([(h, make(h)) for h in hooks], layouts=batch.layouts, read=True):
            if backend == "hooks":
                model.hf(**inputs, **kwargs)
            else:  # one nnsight graph; the reads are replayed after it, the last one raises _Stop
                model.forward(batch, backend=backend)
    except _Stop:
        pass
    missing = [h for h in hooks if h not in got]
    if missing:
        kind = "text-only" if not batch.images or not any(batch.images) else "image"
        raise ValueError(f"hooks {missing} did not fire for a batch of {kind} examples (e.g. vision hooks "
                         "never run on text-only prompts). Collect them on image examples only.")
    return {h: got[h].to("cpu") for h in hooks}


def _check_finite(values: torch.Tensor, hook: str, examples: list[CollectExample], dtype: torch.dtype) -> None:
    check_finite(values, stage="collect_activations", hook=hook, examples=[ex.describe() for ex in examples],
                 dtype=dtype, detail="nothing from this shard was written, finished shards are kept")


def _stack(hook: str, rows: list[torch.Tensor], examples: list[CollectExample]) -> torch.Tensor:
    shapes = {tuple(r.shape) for r in rows}
    if len(shapes) > 1:
        raise ValueError(f"hook {hook!r}: per-example values have different shapes {sorted(shapes)} (e.g. "
                         f"{examples[0].describe()}); the positions function must return the same shape for "
                         "every example.")
    return torch.stack(rows)


def _manifest(model: MLLM, examples: list[CollectExample], hooks: list[str], pos_id: str, dtype: str,
              shard_size: int, chat: bool, system: str | None, batch_size: int) -> dict[str, Any]:
    return {"model_id": model.model_id, "hooks": hooks, "positions": pos_id,
            "dataset_fingerprint": examples_fingerprint(examples), "dtype": dtype, "shard_size": shard_size,
            "n_examples": len(examples), "arch": model.arch, "d_model": model.d_model,
            "identity": {"model_fingerprint": model_fingerprint(model), "chat": chat, "system": system,
                         "edits": [{"hook": h, "fn": callable_identity(fn)} for h, fn in installed_edits(model)],
                         "processor_fingerprint": processor_fingerprint(model.processor)},
            "label_names": label_names(examples), "batch_size": batch_size}


def collect_activations(model: MLLM, dataset: Iterable[Any], *, names: str | Sequence[str],
                        positions: str | PositionFn = "last", batch_size: int = 8,
                        out: str | os.PathLike | None = None, dtype: str | torch.dtype = "float32",
                        shard_size: int = 256, progress: bool = True, chat: bool = True,
                        system: str | None = None, on_shard: ShardCallback | None = None,
                        backend: str | None = None) -> ActivationStore:
    """Run ``dataset`` through ``model`` and store one vector per example and hook.

    Args:
        model: an :class:`MLLM`.
        dataset: iterable of examples (see :mod:`moras_interp.activations.examples`).
        names: hook names or globs (``"blocks.*.hook_resid_post"``); see ``model.hook_names()``.
        positions: ``"last"``, ``"instruction_mean"``, ``"image_mean"`` or ``fn(value, layouts) -> [b, ...]``.
        batch_size: examples per forward.
        out: directory of the store (resumed if it exists), or None to keep everything in memory.
        dtype: storage dtype (values are cast; overflow is an error).
        shard_size: examples per shard (the unit of resumption).
        progress: show a tqdm bar.
        chat, system: prompt formatting passed to ``model.prepare``.
        on_shard: called as ``on_shard(k, store)`` after shard k is written.
        backend: "hooks" (torch hooks; the forward stops at the last requested hook) or "nnsight" (one nnsight
            trace per batch, also remote); default ``model.backend``. Same values either way.

    Returns:
        The :class:`ActivationStore`: ``store.load(hook)`` -> [n, ...]; ``store.load("labels")`` -> int64 [n]
        (index into ``store.manifest["label_names"]``, -1 unlabeled); ``store.load("index")`` -> [n].
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}.")
    pos_id = _positions_id(positions)
    hooks = _check_hooks(model, names, positions)
    examples = normalise_dataset(dataset)
    dtype_name = str(dtype).removeprefix("torch.")
    manifest = _manifest(model, examples, hooks, pos_id, dtype_name, shard_size, chat, system, batch_size)
    backend = model._backend(backend)
    if out is not None and distributed.info().enabled:  # torchrun / accelerate launch: ranks share the shards
        from moras_interp.activations.collect_dist import collect_distributed

        return collect_distributed(model, examples, manifest, out, hooks, positions, batch_size, progress, chat,
                                   system, on_shard, backend)
    with nullcontext() if out is None else folder_lock(out):
        if out is not None:
            from moras_interp.activations.collect_dist import adopt_rank_shards

            adopt_rank_shards(out, manifest)  # shards a killed multi-process run left in out/ranks/
        return _collect(model, examples, manifest, out, hooks, positions, batch_size, progress, chat, system, on_shard,
                        backend)


def _collect(model: MLLM, examples: list[CollectExample], manifest: dict[str, Any], out: str | os.PathLike | None,
             hooks: list[str], positions: str | PositionFn, batch_size: int, progress: bool, chat: bool,
             system: str | None, on_shard: ShardCallback | None, backend: str) -> ActivationStore:
    store = ActivationStore.open_or_create(out, manifest)
    todo = store.missing_shards()
    done = len(examples) - sum(store.shard_range(k)[1] - store.shard_range(k)[0] for k in todo)
    with tqdm(total=len(examples), initial=done, unit="ex", desc="collect", disable=not progress) as bar:
        for k in todo:
            store.write_shard(k, compute_shard(model, examples, store, k, hooks, positions, batch_size, chat, system,
                                               bar.update, backend))
            if on_shard is not None:
                on_shard(k, store)
    return store


def compute_shard(model: MLLM, examples: list[CollectExample], store: ActivationStore, k: int, hooks: list[str],
                  positions: str | PositionFn, batch_size: int, chat: bool, system: str | None,
                  advance: Callable[[int], object] = lambda n: None,
                  backend: str = "hooks") -> dict[str, torch.Tensor]:
    """The tensors of shard ``k``: {hook: [n_in_shard, ...], "labels": [n_in_shard], "index": [n_in_shard]}."""
    names_to_int = {n: i for i, n in enumerate(store.manifest["label_names"])}
    start, stop = store.shard_range(k)
    chunk = examples[start:stop]
    rows: dict[str, list[torch.Tensor | None]] = {h: [None] * len(chunk) for h in hooks}
    for group in _batches(chunk, batch_size):
        batch = model.prepare([ex.load_images() or None for ex in group], [ex.text for ex in group],
                              chat=chat, system=system)
        _check_layouts(group, batch.layouts, positions)
        values = _forward_capture(model, batch, hooks, positions, backend)
        for h, v in values.items():
            _check_finite(v, h, group, model.dtype)
            for ex, row in zip(group, v):
                rows[h][ex.index - start] = row
        advance(len(group))
    tensors = {h: _stack(h, r, chunk) for h, r in rows.items()}  # type: ignore[arg-type]
    tensors["labels"] = torch.tensor([names_to_int.get(ex.label, -1) for ex in chunk], dtype=torch.long)
    tensors["index"] = torch.arange(start, stop, dtype=torch.long)
    return tensors
