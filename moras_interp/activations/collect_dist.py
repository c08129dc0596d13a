"""Data-parallel :func:`~moras_interp.activations.collect_activations`: one store, shards written by their rank.

Under ``torchrun --nproc_per_node K`` (see :mod:`moras_interp.distributed`):

1. rank 0 takes the folder lock of the store, opens (or creates) it with the usual identity check and
   adopts the shards a killed earlier job left (each rank's ``ranks/rank{r}/shards.json``);
2. every rank opens the store read-only (``owner=False``; its own identity is checked against the manifest),
   takes the lock of ``ranks/rank{r}/`` and computes the missing shards dealt to it (missing shard ``i`` →
   rank ``i % K``), each exactly as a single process computes it; rank 0 records its shards in the manifest,
   rank r > 0 writes the shard file atomically and then its entry (sha256, size) to its ``shards.json``;
3. rank 0 verifies every rank's shard against the sha256 its rank recorded, adds it to the manifest and
   removes ``ranks/``.

The shard files are byte-identical to a single-process collection's; a killed rank loses at most the shard
it was computing. ``on_shard`` is called on the rank that wrote the shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from moras_interp import distributed
from moras_interp.activations.manifest import manifest_checksum
from moras_interp.activations.store import ActivationStore
from moras_interp.atomic import atomic_write_text, folder_lock
from moras_interp.readers import read_json

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM

SIDE_FILE = "shards.json"


def _key(store: ActivationStore) -> str:
    """The identity of the store a rank's side file belongs to (manifest checksum without the shard list)."""
    return manifest_checksum({k: v for k, v in store.manifest.items() if k != "shards"})


def adopt_rank_shards(out: str | os.PathLike, manifest: dict[str, Any] | ActivationStore) -> int:
    """Add to the store at ``out`` the shards recorded in ``out/ranks/rank*/shards.json`` (checked against their
    sha256), then remove ``out/ranks/``. Returns the number adopted. Call under the store's folder lock."""
    dirs = [d for d in distributed.rank_dirs(out) if (d / SIDE_FILE).exists()]
    if not dirs:
        if not isinstance(manifest, ActivationStore):
            shutil.rmtree(Path(out) / distributed.RANKS_DIR, ignore_errors=True)
        return 0
    store = manifest if isinstance(manifest, ActivationStore) else ActivationStore.open_or_create(out, manifest)
    n = 0
    for d in dirs:
        side = read_json(d / SIDE_FILE, what="a rank's list of written shards")
        if side.get("store") != _key(store) or not isinstance(side.get("shards"), dict):
            raise ValueError(f"{d / SIDE_FILE} belongs to another collection in {out} (its store identity differs "
                             "from the manifest): delete it (those shards are then recomputed).")
        for k, entry in side["shards"].items():
            if not store.has_shard(int(k)):
                n += store.adopt_shard(int(k), entry)
    store.save_manifest()
    for d in dirs:
        (d / SIDE_FILE).unlink()
    if not isinstance(manifest, ActivationStore):
        shutil.rmtree(Path(out) / distributed.RANKS_DIR, ignore_errors=True)
    return n


def collect_distributed(model: MLLM, examples: list[Any], manifest: dict[str, Any], out: str | os.PathLike,
                        hooks: list[str], positions: Any, batch_size: int, progress: bool, chat: bool,
                        system: str | None, on_shard: Callable[[int, ActivationStore], None] | None,
                        backend: str = "hooks") -> ActivationStore:
    """The multi-process body of ``collect_activations`` (same arguments; see the module docstring)."""
    from moras_interp.activations.collect import compute_shard

    d = distributed.info()
    with contextlib.ExitStack() as locks:
        def setup_main() -> None:
            if d.is_main:
                locks.enter_context(folder_lock(out))
                adopt_rank_shards(out, ActivationStore.open_or_create(out, manifest))

        def setup_rank() -> ActivationStore:
            store = ActivationStore(out, manifest, owner=d.is_main)
            locks.enter_context(folder_lock(distributed.rank_dir(out, d.rank)))
            return store

        distributed.agree(setup_main, "collect_activations: rank 0 opens the store")
        store = distributed.agree(setup_rank, "collect_activations: ranks open the store")
        assert store is not None
        mine = d.mine(store.missing_shards())
        side = distributed.rank_dir(out, d.rank) / SIDE_FILE
        written: dict[str, Any] = {}

        def work() -> None:
            total = sum(store.shard_range(k)[1] - store.shard_range(k)[0] for k in mine)
            with tqdm(total=total, unit="ex", desc=f"collect (rank {d.rank}/{d.world_size})",
                      disable=not progress or not d.is_main) as bar:
                for k in mine:
                    store.write_shard(k, compute_shard(model, examples, store, k, hooks, positions, batch_size, chat,
                                                       system, bar.update, backend))
                    if not d.is_main:  # the shard file is in place; now its entry, for rank 0 to adopt
                        written[str(k)] = store.manifest["shards"][str(k)]
                        atomic_write_text(side, json.dumps({"store": _key(store), "shards": written}))
                    if on_shard is not None:
                        on_shard(k, store)

        distributed.agree(work, "collect_activations: ranks compute their shards")
        distributed.agree(lambda: adopt_rank_shards(out, store) if d.is_main else None,
                          "collect_activations: rank 0 adopts the ranks' shards")
    distributed.agree(None, "collect_activations: ranks release their folders")
    if d.is_main:
        shutil.rmtree(Path(out) / distributed.RANKS_DIR, ignore_errors=True)
        return store
    return ActivationStore(out, manifest, owner=False)


__all__ = ["adopt_rank_shards", "collect_distributed"]
