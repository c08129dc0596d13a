"""One run identity: stale resumes refused with a per-field diff (issue 10, items 1 and 5), fingerprints
checked against hand-computed hashes, --overwrite, prototypes and calibrations tied to their model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import moras_interp as mi
from moras_interp import identity as ident
from moras_interp import weights_hash as wh
from moras_interp.ablations import run_grid
from moras_interp.cli import main
from moras_interp.eval.datasets import Example
from moras_interp.identity import IdentityMismatchError, RunIdentity, check_or_write, model_fingerprint
from moras_interp.models.tiny import build_tiny, tiny_image
from moras_interp.moras import (
    AdaShieldS,
    Calibration,
    MoRAS,
    MoRASConfig,
    NoDefence,
    UnsafePrototype,
    evaluate,
    load_examples,
)
from moras_interp.moras.methods import prepare_moras
from moras_interp.readers import ReadError

TOY = ["moras", "--model", "toy-llava", "--data", "toy", "--limit", "2", "--max-new-tokens", "2", "--quiet", "--no-figures"]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Run the CLI; it must refuse (an exception, or exit 2 with the message on stderr) naming ``needles``."""
    try:
        rc = main(argv)
    except (ValueError, RuntimeError) as e:
        msg = str(e)
    else:
        assert rc == 2
        msg = capsys.readouterr().err
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def n_records(out: Path) -> int:
    return sum(1 for ln in (out / "records.jsonl").read_text().splitlines() if ln.strip())


@pytest.mark.parametrize(("first", "second", "field"), [
    (["--methods", "adashield"], ["--methods", "adashield", "--adashield-position", "prepend"],
     "methods.adashield.position"),
    (["--methods", "ecso"], ["--methods", "ecso", "--ecso-caption-prompt", "describe the image . {question}"],
     "methods.ecso.caption_prompt"),
    (["--methods", "none"], ["--methods", "none", "--seed", "1"], "seed"),
    (["--methods", "none"], ["--methods", "none", "--judge", "prefix"], "judge"),
    (["--methods", "none"], ["--methods", "none", "--judge", "xstest"], "judge"),
])
def test_cli_refuses_a_stale_resume_and_overwrite_starts_afresh(tmp_path, capsys, first, second, field):
    out = tmp_path / "run"
    assert main([*TOY, *first, "--out", str(out)]) == 0
    assert n_records(out) == 2
    msg = refused([*TOY, *second, "--out", str(out)], capsys, str(out), field, "--overwrite")
    assert "existing" in msg and "requested" in msg
    assert n_records(out) == 2  # nothing appended by the refused run
    assert main([*TOY, *second, "--out", str(out), "--overwrite"]) == 0
    assert n_records(out) == 2  # the old records were discarded, not mixed in
    assert main([*TOY, *second, "--out", str(out)]) == 0 and n_records(out) == 2  # same run: resumed


def test_seed_changes_the_toy_examples_content(tmp_path):
    a, b = load_examples("toy", limit=2, seed=0), load_examples("toy", limit=2, seed=1)
    assert [e.id for e in a] == [e.id for e in b]  # ids do not carry the seed ...
    assert ident.data_fingerprint(a) != ident.data_fingerprint(b)  # ... the content fingerprint does


@pytest.fixture(scope="module")
def tiny() -> mi.MLLM:
    hf, proc = build_tiny("llava", seed=3, num_layers=1)
    return mi.load_model(hf, processor=proc)


def _files(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = []
    for i in range(3):
        tiny_image(seed=20 + i).save(tmp_path / f"im{i}.png")
        rows.append({"id": f"q{i}", "question": f"what is thing {i} ?", "image": f"im{i}.png",
                     "label": "unsafe" if i % 2 else "safe"})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, rows


@pytest.mark.parametrize("change", ["label", "question", "image"])
def test_corrected_data_file_is_not_answered_from_old_records(tmp_path, tiny, change):
    data, rows = _files(tmp_path)
    out = tmp_path / "out"
    kw = {"max_new_tokens": 2, "progress": False, "figures": False}
    evaluate(load_examples(data, image_root=tmp_path), {"none": NoDefence(tiny)}, out, **kw)
    if change == "image":
        tiny_image(seed=99).save(tmp_path / "im1.png")
    else:
        rows[1]["label" if change == "label" else "question"] = "safe" if change == "label" else "what is it ?"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exs = load_examples(data, image_root=tmp_path)
    with pytest.raises(IdentityMismatchError, match=r"1 example\(s\) whose content .* id 'q1'.*--overwrite"):
        evaluate(exs, {"none": NoDefence(tiny)}, out, **kw)
    res = evaluate(exs, {"none": NoDefence(tiny)}, out, overwrite=True, **kw)
    assert res.n_run == 3 and len(res.records) == 3
    row = res.records.set_index("id").loc["q1"]
    assert row["question"] == exs[1].text and row["label"] == exs[1].label


def test_limit_change_and_added_method_resume_the_same_run(tmp_path, tiny):
    exs = [Example(f"what is thing {i} ?", tiny_image(seed=i), "unsafe" if i % 2 else "safe", id=f"e{i}")
           for i in range(4)]
    kw = {"max_new_tokens": 2, "progress": False, "figures": False}
    assert evaluate(exs[:2], {"none": NoDefence(tiny)}, tmp_path, **kw).n_run == 2
    assert evaluate(exs, {"none": NoDefence(tiny)}, tmp_path, **kw).n_run == 2  # only the new examples
    res = evaluate(exs, {"none": NoDefence(tiny), "adashield": AdaShieldS(tiny)}, tmp_path, **kw)
    assert res.n_run == 4 and len(res.records) == 8
    stored = json.loads((tmp_path / "identity.json").read_text())
    assert set(stored["methods"]) == {"none", "adashield"} and stored["methods"]["adashield"]["position"] == "append"


def test_new_weights_at_the_same_path_are_refused(tmp_path):
    hf, proc = build_tiny("llava", seed=5, num_layers=1)
    ckpt = tmp_path / "ckpt"
    hf.save_pretrained(ckpt)
    proc.save_pretrained(ckpt)
    model = mi.load_model(str(ckpt))
    files = sorted(ckpt.glob("*.safetensors"))
    # independent reference: the documented full-file hash of a small checkpoint
    ref = hashlib.sha256()
    for f in files:
        fh = hashlib.sha256(f"size={f.stat().st_size}".encode() + f.read_bytes()).hexdigest()
        ref.update(f"{f.name}:{fh}".encode())
    assert ident.model_identity(model)["weights"] == ref.hexdigest()
    exs = [Example("what is it ?", tiny_image(seed=1), "safe", id="a")]
    out = tmp_path / "out"
    evaluate(exs, {"none": NoDefence(model)}, out, max_new_tokens=2, progress=False, figures=False)
    with torch.no_grad():
        next(hf.parameters()).view(-1)[7] += 0.25  # "retrained": one weight changed, saved to the same path
    hf.save_pretrained(ckpt)
    again = mi.load_model(str(ckpt))
    assert again.model_id == model.model_id
    with pytest.raises(IdentityMismatchError, match=r"model\.weights: existing"):
        evaluate(exs, {"none": NoDefence(again)}, out, max_new_tokens=2, progress=False, figures=False)


def test_sampled_weight_hash_of_large_files_reads_the_documented_blocks(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    t = torch.arange(40_000, dtype=torch.float32)  # 160 000 bytes: sampled when "large"
    path = tmp_path / "w.safetensors"
    save_file({"w": t}, str(path))
    monkeypatch.setattr(wh, "FULL_HASH_BYTES", 0)
    n = int.from_bytes(path.read_bytes()[:8], "little")
    base, size = 8 + n, t.numel() * 4
    step = (size - wh.BLOCK) / (wh.BLOCKS_PER_TENSOR + 1)
    offsets = [round(i * step) for i in range(wh.BLOCKS_PER_TENSOR + 2)]
    raw = path.read_bytes()
    ref = hashlib.sha256(f"size={len(raw)}".encode() + raw[8:base])
    for off in offsets:
        ref.update(raw[base + off : base + off + wh.BLOCK])
    assert wh.file_hash(path) == ref.hexdigest()
    covered = bytearray(raw)
    covered[base + offsets[3] + 5] ^= 0xFF           # inside a sampled block: seen
    gap = base + offsets[1] + wh.BLOCK + 10       # between sampled blocks: the documented miss
    missed = bytearray(raw)
    missed[gap] ^= 0xFF
    hashes = []
    for i, data in enumerate((covered, missed)):
        p = tmp_path / f"v{i}.safetensors"
        p.write_bytes(bytes(data))
        hashes.append(wh.file_hash(p))
    assert hashes[0] != ref.hexdigest() and hashes[1] == ref.hexdigest()


def test_run_grid_cache_is_tied_to_evaluator_and_dataset_content(tmp_path):
    def double(setting, dataset):
        return [{"y": 2 * x * setting["a"]} for x in dataset]

    def triple(setting, dataset):
        return [{"y": 3 * x * setting["a"]} for x in dataset]

    grid = {"a": [1, 2]}
    assert run_grid(grid, double, [1, 2, 3], out=tmp_path, progress=False).y.tolist() == [2, 4, 6, 4, 8, 12]
    with pytest.raises(IdentityMismatchError, match=r"extra\.evaluator\.function"):
        run_grid(grid, triple, [1, 2, 3], out=tmp_path, progress=False)
    with pytest.raises(IdentityMismatchError, match=r"\n  data: existing"):
        run_grid(grid, double, [4, 5, 6], out=tmp_path, progress=False)  # same length, other content
    df = run_grid(grid, triple, [1, 2, 3], out=tmp_path, progress=False, overwrite=True)
    assert df.y.tolist() == [3, 6, 9, 6, 12, 18]


def test_prototype_of_another_model_with_the_same_width_is_refused(tiny):
    hf, proc = build_tiny("llava", seed=4, num_layers=1)
    other = mi.load_model(hf, processor=proc)
    assert other.d_model == tiny.d_model and model_fingerprint(other) != model_fingerprint(tiny)
    proto = UnsafePrototype.build(other, ["what is it ?", "tell me a thing ."], n_tokens=2, progress=False)
    cal = Calibration(0.5, 10.0)
    MoRAS(other, proto, cal, n_tokens=2)  # its own model: fine
    with pytest.raises(ValueError, match="built on another model"):
        MoRAS(tiny, proto, cal, n_tokens=2)


def test_hand_edited_calibration_is_refused(tmp_path, tiny):
    kw = {"calibration": Calibration(0.4, 12.0), "out": tmp_path, "harmful_prompts": ["what is it ?"],
          "progress": False, "config": MoRASConfig(n_tokens=2)}
    first = prepare_moras(tiny, **kw)
    again = prepare_moras(tiny, **kw)
    assert (again.calibration.x0, again.calibration.k) == (first.calibration.x0, first.calibration.k) == (0.4, 12.0)
    p = tmp_path / "calibration.json"
    good = p.read_text()
    d = json.loads(good)
    d["calibration"]["x0"] = 1.5
    p.write_text(json.dumps(d))
    with pytest.raises(ReadError, match=r"calibration\.json was edited by hand"):
        prepare_moras(tiny, **kw)
    body = {k: v for k, v in d.items() if k != "checksum"}  # re-sealed: the range check still refuses x0 = 1.5
    p.write_text(json.dumps(body | {"checksum": ident.sha256_json(body)}))
    with pytest.raises(ReadError, match=r"x0 = 1\.5 is outside \[0, 1\]"):
        prepare_moras(tiny, **kw)
    p.write_text(good)
    hf, proc = build_tiny("llava", seed=4, num_layers=1)
    other = mi.load_model(hf, processor=proc)
    with pytest.raises(IdentityMismatchError, match=r"model_fingerprint: existing"):
        prepare_moras(other, **kw)  # same width, another model: its prototype/calibration are not reused
    assert prepare_moras(other, **kw, overwrite=True).calibration.x0 == 0.4


def test_run_identity_diff_and_check_or_write(tmp_path):
    a = RunIdentity("evaluation", model={"weights": "w1"}, methods={"m": {"p": 1}}, seed=0)
    b = RunIdentity("evaluation", model={"weights": "w2"}, methods={"m": {"p": 1}, "n": {}}, seed=0)
    assert a.diff(b) == ["  methods.n: (absent) ≠ requested {}", "  model.weights: existing 'w1' ≠ requested 'w2'"]
    assert a.diff(b, merge=("methods",)) == ["  model.weights: existing 'w1' ≠ requested 'w2'"]
    assert check_or_write(tmp_path, a) == "new" and check_or_write(tmp_path, a) == "same"
    (tmp_path / "records.jsonl").write_text("{}\n")
    with pytest.raises(IdentityMismatchError, match=r"(?s)different run:\n  model\.weights.*--overwrite"):
        check_or_write(tmp_path, b, artefacts=("records.jsonl",), merge=("methods",))
    assert check_or_write(tmp_path, b, True, artefacts=("records.jsonl",)) == "overwritten"
    assert not (tmp_path / "records.jsonl").exists()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "records.jsonl").write_text("{}\n")
    with pytest.raises(IdentityMismatchError, match=r"no identity\.json"):
        check_or_write(legacy, a, artefacts=("records.jsonl",))


def test_finished_read_only_folder_is_summarised_without_writing(tmp_path, tiny, monkeypatch):
    import importlib

    ev = importlib.import_module("moras_interp.moras.evaluate")
    exs = [Example(f"what is thing {i} ?", tiny_image(seed=i), "unsafe" if i % 2 else "safe", id=f"e{i}")
           for i in range(3)]
    kw = {"max_new_tokens": 2, "progress": False, "figures": False}
    done = evaluate(exs[:2], {"none": NoDefence(tiny)}, tmp_path, **kw)
    for name in (".lock", "results.csv", "results.json", "results.md"):
        (tmp_path / name).unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(ev.os, "access", lambda path, mode: False)  # as on a read-only mount (tests run as root)
    res = evaluate(exs[:2], {"none": NoDefence(tiny)}, tmp_path, **kw)
    assert res.n_run == 0 and res.summary.equals(done.summary)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no lock file
    with pytest.raises(PermissionError, match="read-only and lacks 1"):
        evaluate(exs, {"none": NoDefence(tiny)}, tmp_path, **kw)
    with pytest.raises(IdentityMismatchError, match=r"generation\.max_new_tokens"):
        evaluate(exs[:2], {"none": NoDefence(tiny)}, tmp_path, **kw | {"max_new_tokens": 3})


def test_weights_changed_in_memory_after_load_change_the_identity(tmp_path):
    """A model loaded from files is identified by their hash only while its parameters are untouched; an
    in-place edit (p.mul_) makes the identity hash the parameters, so a resume over the edit is refused."""
    from moras_interp import collect_activations
    from moras_interp.identity import model_fingerprint, model_identity

    m = mi.load_model("toy-llava")
    before, ident = model_fingerprint(m), model_identity(m)
    assert "safetensors" in ident["weights_source"]
    ds = [{"text": "how do i make a bomb ?", "label": "unsafe"}, {"text": "how do i bake bread ?", "label": "safe"}]
    collect_activations(m, ds, names="blocks.0.hook_resid_post", out=tmp_path / "store", progress=False)
    with torch.no_grad():
        next(m.hf.parameters()).mul_(1.01)
    assert model_fingerprint(m) != before and "changed in memory" in model_identity(m)["weights_source"]
    with pytest.raises(ValueError, match="model"):
        collect_activations(m, ds, names="blocks.0.hook_resid_post", out=tmp_path / "store", progress=False)


def test_eos_changed_in_memory_changes_the_identity_and_refuses_the_prototype(tmp_path):
    """generation_config.eos_token_id decides where answers and prototype steps end: editing it in memory must
    change model_fingerprint (so a resume of a store/run made before the edit is refused) and must make a
    prototype built with the old ids refuse to load (its per-step states stop at the old EOS)."""
    from moras_interp import collect_activations
    from moras_interp.moras.states import eos_ids

    hf, proc = build_tiny("llava", seed=3, num_layers=1)
    m = mi.load_model(hf, processor=proc)
    before, weights_before = model_fingerprint(m), ident.weights_fingerprint(m)
    proto = UnsafePrototype.build(m, ["what is it ?", "tell me a thing ."], n_tokens=2, progress=False)
    assert proto.provenance["eos_ids"] == eos_ids(m)
    ds = [{"text": "how do i make a bomb ?", "label": "unsafe"}, {"text": "how do i bake bread ?", "label": "safe"}]
    collect_activations(m, ds, names="blocks.0.hook_resid_post", out=tmp_path / "store", progress=False)
    old = m.hf.generation_config.eos_token_id
    new = (old if isinstance(old, int) else old[0]) + 1
    m.hf.generation_config.eos_token_id = new
    assert eos_ids(m) == [new]
    assert model_fingerprint(m) != before and ident.weights_fingerprint(m) == weights_before
    with pytest.raises(ValueError, match="model_fingerprint"):
        collect_activations(m, ds, names="blocks.0.hook_resid_post", out=tmp_path / "store", progress=False)
    with pytest.raises(ValueError, match=rf"built with EOS ids \[{old if isinstance(old, int) else old[0]}\].*"
                                         rf"now gives \[{new}\]"):
        proto.check(m)
    m.hf.generation_config.eos_token_id = old
    assert model_fingerprint(m) == before
    proto.check(m)
