"""ActivationStore: atomic shards, resume after a crash, identity checks, verification."""

import json

import pytest
import torch

from moras_interp.activations.store import ActivationStore, StoreWarning, dataset_fingerprint

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
N, SHARD, D = 14, 4, 6                                                # 4 shards: 4, 4, 4, 2


def manifest(**over):
    m = {"model_id": "toy/organism", "arch": "llava", "hooks": HOOKS, "positions": "last",
         "dataset_fingerprint": dataset_fingerprint(f"example {i}" for i in range(N)), "dtype": "float32",
         "shard_size": SHARD, "n_examples": N}
    return m | over


def compute_shard(k: int) -> dict[str, torch.Tensor]:
    """Deterministic fake activations for examples [4k, 4k + n)."""
    start, stop = k * SHARD, min((k + 1) * SHARD, N)
    idx = torch.arange(start, stop)
    g = torch.Generator().manual_seed(k)
    out = {h: torch.randn(len(idx), D, generator=g) + j for j, h in enumerate(HOOKS)}
    return out | {"labels": idx % 2 == 0, "index": idx}


class Killed(RuntimeError):
    pass


def run(store: ActivationStore, calls: list[int], kill_after: int | None = None) -> None:
    """A collection loop: skip finished shards, compute the rest, a callback may 'kill' the run."""
    for k in range(store.n_shards):
        if store.has_shard(k):
            continue
        calls.append(k)
        store.write_shard(k, compute_shard(k), meta={"k": k})
        if kill_after is not None and len(store.completed_shards()) == kill_after:
            raise Killed


def test_fingerprint():
    fp = dataset_fingerprint(["a", b"\x89PNG"])
    assert fp == dataset_fingerprint(iter(["a", b"\x89PNG"])) and len(fp) == 64
    assert fp != dataset_fingerprint([b"\x89PNG", "a"])
    assert dataset_fingerprint(["ab", "c"]) != dataset_fingerprint(["a", "bc"])
    assert dataset_fingerprint(["a"]) != dataset_fingerprint([b"a"])
    assert dataset_fingerprint([]) != dataset_fingerprint([""])
    with pytest.raises(TypeError, match="item 1"):
        dataset_fingerprint(["a", 3])


@pytest.mark.parametrize("on_disk", [True, False])
def test_write_and_load(tmp_path, on_disk):
    store = ActivationStore(tmp_path / "run" if on_disk else None, manifest())
    assert store.missing_shards() == [0, 1, 2, 3] and store.shard_range(3) == (12, 14)
    run(store, [])
    assert store.is_complete() and store.completed_shards() == [0, 1, 2, 3]
    x = store.load(HOOKS[1])
    assert x.shape == (N, D) and x.dtype == torch.float32
    assert torch.equal(x[4:8], compute_shard(1)[HOOKS[1]])
    assert torch.equal(store.labels(), torch.arange(N) % 2 == 0)
    assert torch.equal(store.load("index"), torch.arange(N))
    if on_disk:
        files = sorted(p.name for p in (tmp_path / "run").iterdir())
        assert files == ["manifest.json"] + [f"shard_{k:05d}.safetensors" for k in range(4)]
        m = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert set(m["shards"]) == {"0", "1", "2", "3"} and m["shards"]["3"]["n"] == 2
        reopened = ActivationStore.open(tmp_path / "run")
        assert torch.equal(reopened.load(HOOKS[0]), store.load(HOOKS[0]))


def test_killed_run_resumes_byte_identical(tmp_path):
    full_calls: list[int] = []
    run(ActivationStore.open_or_create(tmp_path / "full", manifest()), full_calls)
    assert full_calls == [0, 1, 2, 3]

    calls: list[int] = []
    with pytest.raises(Killed):
        run(ActivationStore.open_or_create(tmp_path / "resumed", manifest()), calls, kill_after=2)
    assert calls == [0, 1]
    (tmp_path / "resumed" / ".tmp-shard_00002.safetensors.abc").write_bytes(b"half")   # a torn write
    resumed = ActivationStore.open_or_create(tmp_path / "resumed", manifest())
    assert resumed.completed_shards() == [0, 1]
    with pytest.raises(ValueError, match=r"missing shards \[2, 3\]"):
        resumed.load(HOOKS[0])
    assert resumed.load(HOOKS[0], allow_partial=True).shape == (8, D)
    run(resumed, calls)
    assert calls == [0, 1, 2, 3]                                        # finished shards not recomputed
    for k in range(4):
        name = f"shard_{k:05d}.safetensors"
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()
    assert not list((tmp_path / "resumed").glob(".tmp-*"))


def test_identity_mismatch_lists_fields(tmp_path):
    ActivationStore(tmp_path, manifest())
    with pytest.raises(ValueError) as e:
        ActivationStore.open_or_create(tmp_path, manifest(model_id="other/model", dtype=torch.bfloat16))
    msg = str(e.value)
    assert "model_id: existing 'toy/organism' != requested 'other/model'" in msg
    assert "dtype: existing 'float32' != requested 'bfloat16'" in msg
    assert "hooks" not in msg and "another directory" in msg
    ActivationStore.open_or_create(tmp_path, manifest(arch="renamed"))     # non-identity fields may change


def test_corrupt_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"corrupt activation-store manifest .*manifest\.json"):
        ActivationStore.open_or_create(tmp_path, manifest())
    (tmp_path / "manifest.json").write_text(json.dumps({"model_id": "x"}))
    with pytest.raises(ValueError, match=r"manifest\.json: missing or invalid keys \['hooks'"):
        ActivationStore.open_or_create(tmp_path, manifest())
    with pytest.raises(ValueError, match="missing required fields \\['positions'\\]"):
        ActivationStore(None, {k: v for k, v in manifest().items() if k != "positions"})


def test_tampered_shard_is_recomputed_with_warning(tmp_path):
    store = ActivationStore(tmp_path, manifest())
    run(store, [])
    path = tmp_path / "shard_00001.safetensors"
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    (tmp_path / "shard_00003.safetensors").unlink()
    with pytest.warns(StoreWarning) as record:
        resumed = ActivationStore.open_or_create(tmp_path, manifest())
    messages = sorted(str(w.message) for w in record)
    assert "shard_00001.safetensors does not match its sha256" in messages[0]
    assert "shard_00003.safetensors is missing: shard 3 will be recomputed" in messages[1]
    assert resumed.completed_shards() == [0, 2]
    hook = manifest()["hooks"][0]
    with pytest.raises(ValueError, match=r"missing shards \[1, 3\]; shard 1 was dropped when the store was "
                       r"opened: shard_00001\.safetensors does not match its sha256 in the manifest \(corrupt or "
                       r"modified\); shard 3 was dropped .*shard_00003\.safetensors is missing \(re-run"):
        resumed.load(hook)
    calls: list[int] = []
    run(resumed, calls)
    assert calls == [1, 3] and path.read_bytes() == good


def test_write_shard_validation():
    store = ActivationStore(None, manifest(dtype="float16"))
    bad = compute_shard(0)
    bad[HOOKS[1]][1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf at hook 'blocks\.1\.hook_resid_post'"):
        store.write_shard(0, bad)
    big = compute_shard(0)
    big[HOOKS[0]] = big[HOOKS[0]] * 1e6
    with pytest.raises(ValueError, match=r"'blocks\.0\.hook_resid_post'.*overflow float16"):
        store.write_shard(0, big)
    with pytest.raises(ValueError, match=r"missing hooks \['blocks.1.hook_resid_post'\], unknown keys \['x'\]"):
        store.write_shard(0, {HOOKS[0]: torch.zeros(4, D), "x": torch.zeros(4)})
    with pytest.raises(ValueError, match="needs 2 examples"):
        store.write_shard(3, compute_shard(0))
    with pytest.raises(ValueError, match="out of range"):
        store.write_shard(4, compute_shard(0))
    store.write_shard(0, compute_shard(0))
    assert store.load(HOOKS[0], allow_partial=True).dtype == torch.float16
    assert store.labels(allow_partial=True).dtype == torch.bool
    with pytest.raises(KeyError, match="unknown tensor"):
        store.load("nope")
