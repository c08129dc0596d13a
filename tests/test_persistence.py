"""One persistence layer: folder lock with two real processes, records de-duplicated and validated, trace paths
taken as given, every reader naming the file (and line) it rejects, the activation store's manifest checked
(issue 10, items 2, 8, 9 and 10)."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from moras_interp.activations.directions import Direction
from moras_interp.activations.manifest import manifest_checksum as _checksum
from moras_interp.activations.store import ActivationStore, dataset_fingerprint
from moras_interp.atomic import FolderLockedError, folder_lock
from moras_interp.moras import MoRASTrace, RecordStore, UnsafePrototype
from moras_interp.moras.evaluate import SEAL, seal
from moras_interp.readers import ReadError, read_json, read_jsonl, read_npz, read_safetensors
from moras_interp.viz.export import load_npz, save_npz

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import moras_interp as mi
    from moras_interp.eval.datasets import Example
    from moras_interp.models.tiny import build_tiny, tiny_image
    from moras_interp.moras import NoDefence, evaluate

    out, signal, release = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    hf, proc = build_tiny("llava", seed=3, num_layers=1)
    model = mi.load_model(hf, processor=proc)

    class Slow(NoDefence):
        def run(self, *a, **kw):
            signal.touch()
            t0 = time.time()
            while release != "-" and not Path(release).exists() and time.time() - t0 < 300:
                time.sleep(0.05)  # hold the folder until the test says so
            return super().run(*a, **kw)

    exs = [Example(f"what is thing {i} ?", tiny_image(seed=i), "safe", id=f"e{i}") for i in range(4)]
    try:
        evaluate(exs, {"none": Slow(model)}, out, batch_size=2, max_new_tokens=2, progress=False, figures=False)
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(3)
""")


def test_two_processes_on_one_folder_the_second_fails_clearly(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    out, sig = tmp_path / "run", tmp_path / "started"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    release = tmp_path / "release"
    first = subprocess.Popen([sys.executable, str(script), str(out), str(sig), str(release)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not sig.exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.1)
        second = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "s2"), "-"], env=env,
                                capture_output=True, text=True, timeout=300)
    finally:
        release.touch()
    assert second.returncode == 3, second.stderr
    assert f"FolderLockedError: {out} is being written by another run (PID {first.pid}" in second.stderr
    assert first.wait(timeout=300) == 0, first.communicate()
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == ["e0", "e1", "e2", "e3"]  # not doubled
    with folder_lock(out):  # released when the first process ended
        pass


def test_folder_lock_in_one_process(tmp_path):
    with folder_lock(tmp_path), folder_lock(tmp_path):  # re-entrant for the holder
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        code = f"from moras_interp.atomic import folder_lock\nwith folder_lock({str(tmp_path)!r}): pass"
        r = subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and f"(PID {os.getpid()}" in r.stderr and "FolderLockedError" in r.stderr
    assert FolderLockedError.__mro__[1] is RuntimeError


REC = {"method": "none", "id": "a", "label": "safe", "answer": "ok", "refused": False, "risk": None,
       "stage_times": {"answer": 0.1}, "latency_s": 0.1}


@pytest.mark.parametrize(("lines", "outcome"), [
    ([REC, REC | {"stage_times": {"answer": 0.3}, "latency_s": 0.3}], 1),   # same result, other timing: one kept
    ([REC, REC | {"id": "b"}], 2),
    ([REC, REC | {"answer": "no", "refused": True}], r"records\.jsonl:2 repeats \(method 'none', id 'a'\) of line 1"),
    ([REC, REC | {"refused": "yes"}], r"records\.jsonl:2: field 'refused' must be bool"),
    ([REC, REC | {"risk": "high"}], r"records\.jsonl:2: field 'risk' must be int or float"),
    ([REC, {k: v for k, v in REC.items() if k != "answer"}], r"records\.jsonl:2: missing field 'answer'"),
    ([REC, "not json"], r"records\.jsonl:2: not valid JSON"),
    ([REC, [1, 2]], r"records\.jsonl:2: expected a JSON object per line"),
    ([REC, "edited"], r"records\.jsonl:2 \(method 'none', id 'b'\) does not match its checksum 'record_sha256'"),
])
def test_records_are_validated_and_deduplicated(tmp_path, lines, outcome):
    def line(x):  # records as the store writes them (sealed); "edited": a sealed record changed by hand
        if x == "edited":
            return json.dumps(REC | {"id": "b", SEAL: seal(REC | {"id": "b"}), "refused": True})
        return x if isinstance(x, str) else json.dumps(x | {SEAL: seal(x)} if isinstance(x, dict) else x)

    path = tmp_path / "records.jsonl"
    path.write_text("".join(line(x) + "\n" for x in lines))
    store = RecordStore(path)
    if isinstance(outcome, int):
        with pytest.warns(UserWarning, match="dropped 1 repeated") if outcome == 1 else _no_warning():
            assert len(store.load()) == outcome
    else:
        with pytest.raises(ReadError, match=outcome):
            store.load()


class _no_warning:
    def __enter__(self):
        import warnings

        self._c = warnings.catch_warnings()
        self._c.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._c.__exit__(*exc)


def test_record_append_is_one_write_and_torn_tail_is_dropped(tmp_path):
    store = RecordStore(tmp_path / "records.jsonl")
    store.append([REC, REC | {"id": "b"}])
    with open(store.path, "ab") as fh:
        fh.write(b'{"method": "none", "id": "c", "ans')
    assert [r["id"] for r in store.load()] == ["a", "b"]
    assert store.path.read_bytes().endswith(b"\n")


def test_trace_paths_are_taken_as_given(tmp_path):
    traces = {}
    for r in ("0.5", "0.99"):
        tr = MoRASTrace(question=f"q{r}", answer=f"a{r}", risk=float(r), stage2_states=torch.full((2, 3), float(r)))
        assert tr.save(tmp_path / f"t_r{r}") == tmp_path / f"t_r{r}.json"
        traces[r] = tr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t_r0.5.json", "t_r0.5.safetensors", "t_r0.99.json",
                                                          "t_r0.99.safetensors"]
    for r, tr in traces.items():
        back = MoRASTrace.load(tmp_path / f"t_r{r}")
        assert back.risk == float(r) and torch.equal(back.stage2_states, tr.stage2_states)
    assert MoRASTrace(question="x").save(tmp_path / "plain.json") == tmp_path / "plain.json"
    assert MoRASTrace.load(tmp_path / "plain.json").stage2_states is None
    MoRASTrace(question="y").save(tmp_path / "t_r0.5")  # re-saved without states: the old states are not attached
    assert MoRASTrace.load(tmp_path / "t_r0.5").stage2_states is None
    assert sidecar_name("run_r0.5") == "run_r0.5.json" and sidecar_name("a.npz") == "a.json"


def sidecar_name(name: str) -> str:
    from moras_interp.viz.export import sidecar_path

    return sidecar_path(Path(name)).name


def _pickled(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"x": 1}))
    return path


def _torch_saved(path: Path) -> Path:
    torch.save({"x": torch.ones(2)}, path)
    return path


def _truncated_st(path: Path) -> Path:
    save_file({"stage2_states": torch.ones(64, 64), "ln_final.hook_out": torch.ones(3, 4)}, str(path))
    path.write_bytes(path.read_bytes()[:300])
    return path


def _object_npz(path: Path) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, a=np.array([{"x": 1}], dtype=object))
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x00\x01garbage" * 10)
    return path


CORRUPT = [  # (reader, how the file is damaged, the message)
    (read_json, lambda p: p.write_text('{"a": [1, 2'), r"x\.json: not valid JSON \(truncated\?\)"),
    (read_json, lambda p: p.write_text(""), r"x\.json: not valid JSON \(the file is empty\)"),
    (read_json, _pickled, r"x\.json is a Python pickle, not a JSON file: pickles are never loaded"),
    (read_json, lambda p: p.write_bytes(b"\xff\xfe{}"), r"x\.json is not a JSON file: byte 0 is not UTF-8"),
    (read_jsonl, lambda p: p.write_text('{"a": 1}\n\n{"b": \n'), r"x\.json:3: not valid JSON"),
    (read_safetensors, _truncated_st, r"x\.json .*truncated or corrupt"),
    (read_safetensors, _garbage, r"x\.json is not a valid safetensors file"),
    (read_safetensors, _pickled, r"x\.json is a Python pickle, not a safetensors file"),
    (read_safetensors, _torch_saved, r"x\.json is a torch\.save \(pickle\) archive, not a safetensors file"),
    (read_npz, _torch_saved, r"x\.json is a torch\.save \(pickle\) archive, not an NPZ file"),
    (read_npz, lambda p: _object_npz(p), r"x\.json holds object \(pickled\) arrays"),
    (read_npz, _garbage, r"x\.json is not an NPZ \(zip\) file"),
]


@pytest.mark.parametrize(("reader", "damage", "message"), CORRUPT)
def test_readers_name_the_file(tmp_path, reader, damage, message):
    path = tmp_path / "x.json"  # one name for every case: the message must name it, whatever the format
    damage(path)
    with pytest.raises(ReadError, match=message):
        reader(path)


@pytest.mark.parametrize("damage", [_truncated_st, _pickled, _torch_saved, _garbage])
def test_public_loaders_name_the_file(tmp_path, damage):
    for name, load in (("p.safetensors", UnsafePrototype.load), ("d.safetensors", Direction.load)):
        path = damage(tmp_path / name)
        with pytest.raises(ReadError, match=re.escape(str(path))):
            load(path)
    tr = MoRASTrace(question="q", stage2_states=torch.ones(2, 2))
    tr.save(tmp_path / "t")
    damage(tmp_path / "t.safetensors")
    with pytest.raises(ReadError, match=re.escape(str(tmp_path / "t.safetensors"))):
        MoRASTrace.load(tmp_path / "t")
    save_npz(tmp_path / "a.npz", {"x": np.ones(3)}, {"k": 1})
    damage(tmp_path / "a.npz")
    with pytest.raises(ReadError, match=re.escape(str(tmp_path / "a.npz"))):
        load_npz(tmp_path / "a.npz")


def test_npz_round_trip_and_trace_json_validation(tmp_path):
    save_npz(tmp_path / "a_r0.5", {"x": np.arange(3)}, {"k": 1})
    arrays, meta = load_npz(tmp_path / "a_r0.5")
    assert arrays["x"].tolist() == [0, 1, 2] and meta == {"k": 1} and (tmp_path / "a_r0.5.json").exists()
    (tmp_path / "t.json").write_text(json.dumps({"question": "q", "method": "moras", "answer": 3}))
    with pytest.raises(ReadError, match=r"t\.json: field 'answer' must be str"):
        MoRASTrace.load(tmp_path / "t")


HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def _store(root: Path) -> ActivationStore:
    m = {"model_id": "m", "hooks": HOOKS, "positions": "last", "dataset_fingerprint": dataset_fingerprint(["x"]),
         "dtype": "float32", "shard_size": 4, "n_examples": 6, "label_names": ["safe", "unsafe"]}
    store = ActivationStore(root, m)
    for k in store.missing_shards():
        a, b = store.shard_range(k)
        store.write_shard(k, {h: torch.full((b - a, 5), float(j)) for j, h in enumerate(HOOKS)}
                          | {"labels": torch.arange(a, b) % 2})
    return store


@pytest.mark.parametrize(("field", "value", "message"), [
    ("n_examples", 8, "n_examples=8 and shard_size=4 give 4 for shard 1"),
    ("n_examples", 4, "shard 1 lies beyond n_examples=4"),
    ("dtype", "float16", "is stored as F32 but the manifest says float16"),
])
def test_edited_store_manifest_is_refused(tmp_path, field, value, message):
    _store(tmp_path)
    path = tmp_path / "manifest.json"
    m = json.loads(path.read_text())
    m[field] = value
    path.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="edited by hand"):
        ActivationStore.open(tmp_path)
    m.pop("checksum")  # re-sealed (a consistent but wrong manifest): the shard headers still disagree
    path.write_text(json.dumps(m | {"checksum": _checksum(m)}))
    with pytest.raises(ValueError, match=re.escape(message)):
        ActivationStore.open(tmp_path)


def test_reversed_label_names_are_refused(tmp_path):
    _store(tmp_path)
    path = tmp_path / "manifest.json"
    m = json.loads(path.read_text())
    m["label_names"] = ["unsafe", "safe"]
    path.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="edited by hand"):
        ActivationStore.open(tmp_path)
    m.pop("checksum")
    path.write_text(json.dumps(m | {"checksum": _checksum(m)}))
    requested = {k: v for k, v in m.items() if k not in ("shards", "format")} | {"label_names": ["safe", "unsafe"]}
    with pytest.raises(ValueError, match=r"label_names: existing \['unsafe', 'safe'\]"):
        ActivationStore.open_or_create(tmp_path, requested)  # the collector's labels disagree with the store's


def test_store_reads_only_the_requested_tensor(tmp_path, monkeypatch):
    store = _store(tmp_path)
    want = torch.cat([torch.full((4, 5), 1.0), torch.full((2, 5), 1.0)])
    calls = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: calls.append(self.name) or real(self))
    assert torch.equal(store.load(HOOKS[1]), want)
    assert calls == []  # no shard was read whole
    assert set(store.read_shard(0, [HOOKS[0]])) == {HOOKS[0]}
    assert torch.equal(store.labels(), torch.arange(6) % 2)


def test_no_file_write_bypasses_atomic_py():
    pattern = re.compile(r"""(?<![\w.])open\([^)]*["'][wax]b?\+?["']|\.write_text\(|\.write_bytes\(|\.to_csv\([^)]*(/|path|out)|"""
                         r"""np\.save\(|torch\.save\(""")
    bad = []
    for p in sorted((ROOT / "moras_interp").rglob("*.py")):
        if p.name == "atomic.py":
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith(("#", '"', "'")) and "``" not in line:
                bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert bad == []
