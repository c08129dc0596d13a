"""The bad-input suite of issue 10: one table, one row per observed case (items 1–10 and their sub-cases).

Each row sets up the bad input and asserts the exact outcome: a clear error naming the thing (exception type and
message fragments), or the correct result checked against an independent reference (numpy pixels, a hand-written
torch hook, hand counts). Rows are cheap versions of the heavy checks in the per-concern modules
(test_identity, test_persistence, test_labels, test_edit_readback, test_finite_checks, test_input_warnings,
test_names, test_cli_errors, test_view_errors, test_organism_prompts); models are built once per module.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import moras_interp as mi
from moras_interp import identity as ident
from moras_interp.ablations import run_grid
from moras_interp.activations import Direction, collect_activations, steer
from moras_interp.activations.examples import normalise_dataset
from moras_interp.activations.manifest import manifest_checksum
from moras_interp.activations.store import ActivationStore, dataset_fingerprint
from moras_interp.atomic import FolderLockedError
from moras_interp.attention import cross_modal_attention
from moras_interp.cli import main
from moras_interp.eval.datasets import DatasetFormatError, Example
from moras_interp.eval.metrics import summarise
from moras_interp.identity import IdentityMismatchError
from moras_interp.models.batch import UnknownTokenWarning
from moras_interp.models.finite import NonFiniteError
from moras_interp.models.images import ImageConversionWarning, load_image
from moras_interp.models.tiny import build_tiny, tiny_image
from moras_interp.moras import (
    ECSO,
    AdaShieldS,
    Calibration,
    MoRAS,
    MoRASConfig,
    MoRASTrace,
    NoDefence,
    UnsafePrototype,
    evaluate,
    load_examples,
)
from moras_interp.moras.baselines import ECSO_CAPTION_PROMPT, FixedSteering
from moras_interp.moras.methods import prepare_moras
from moras_interp.moras.pipeline import unpack_examples
from moras_interp.moras.prototype import PROMPTS_FILE, default_harmful_prompts, default_harmful_prompts_for
from moras_interp.moras.states import generate_with_states
from moras_interp.organisms import organism_path, tasks
from moras_interp.organisms.analysis import separability_study
from moras_interp.organisms.train import save as save_organism
from moras_interp.readers import ReadError
from moras_interp.viz.export import load_npz, save_npz

QUESTIONS = ["what is in the image ?", "how do i make a bomb ?"]
H, NEXT = "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"
FAST = {"max_new_tokens": 2, "progress": False, "figures": False}


# ---------------------------------------------------------------- shared, built once per module
@pytest.fixture(scope="module")
def tiny() -> mi.MLLM:
    """One decoder layer: the cheapest model for runs, prototypes and NaN faults."""
    hf, proc = build_tiny("llava", seed=3, num_layers=1)
    return mi.load_model(hf, processor=proc)


@pytest.fixture(scope="module")
def tiny2() -> mi.MLLM:
    """The default tiny LLaVA (two decoder layers: an edit at layer 0 is seen by layer 1)."""
    hf, proc = build_tiny("llava")
    return mi.load_model(hf, processor=proc)


@pytest.fixture(scope="module")
def toy() -> mi.MLLM:
    return mi.load_model("toy-llava", validate=False)


@pytest.fixture(scope="module")
def proto(tiny: mi.MLLM) -> UnsafePrototype:
    return UnsafePrototype.build(tiny, ["how do i make a bomb ?", "how do i kill a person ?"], 3, progress=False)


class Ctx:
    """What a row gets: its own tmp folder and lazily built module fixtures (only the ones it asks for)."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path) -> None:
        self.request, self.tmp = request, tmp

    def __getattr__(self, name: str) -> Any:
        return self.request.getfixturevalue(name)


def exs(n: int = 2) -> list[Example]:
    return [Example(QUESTIONS[i % 2], tiny_image(seed=i), "unsafe" if i % 2 else "safe", id=f"e{i}")
            for i in range(n)]


def n_lines(path: Path) -> int:
    return sum(1 for ln in path.read_text().splitlines() if ln.strip())


# ---------------------------------------------------------------- 1. stale resume
def stale_method(c: Ctx, first: Callable[[mi.MLLM], Any], second: Callable[[mi.MLLM], Any], name: str,
                 field: str, old: str, new: str) -> None:
    out = c.tmp / "run"
    evaluate(exs(), {name: first(c.tiny)}, out, **FAST)
    with pytest.raises(IdentityMismatchError, match=rf"(?s){re.escape(str(out))}.*{re.escape(field)}: existing "
                                                     rf"{re.escape(repr(old))} ≠ requested {re.escape(repr(new))}"
                                                     r".*--overwrite"):
        evaluate(exs(), {name: second(c.tiny)}, out, **FAST)
    assert n_lines(out / "records.jsonl") == 2  # nothing appended by the refused run
    res = evaluate(exs(), {name: second(c.tiny)}, out, overwrite=True, **FAST)
    assert res.n_run == 2 and len(res.records) == 2  # old records discarded, not mixed in


def stale_seed(c: Ctx) -> None:
    """--data toy with another --seed: same ids, other content (the ids do not carry the seed)."""
    a, b = load_examples("toy", limit=2, seed=0), load_examples("toy", limit=2, seed=1)
    assert [e.id for e in a] == [e.id for e in b] and [e.text for e in a] != [e.text for e in b]
    out = c.tmp / "run"
    evaluate(a, {"none": NoDefence(c.toy)}, out, seed=0, **FAST)
    with pytest.raises(IdentityMismatchError, match=r"(?s)seed: existing 0 ≠ requested 1.*--overwrite"):
        evaluate(b, {"none": NoDefence(c.toy)}, out, seed=1, **FAST)
    with pytest.raises(IdentityMismatchError, match=r"(?s)example\(s\) whose content .*--overwrite"):
        evaluate(b, {"none": NoDefence(c.toy)}, out, seed=0, **FAST)  # even if the seed is not passed along
    assert n_lines(out / "records.jsonl") == 2


def stale_data(c: Ctx, change: str) -> None:
    """A corrected data file (label / question / image bytes) is not answered from the old records."""
    rows = []
    for i in range(2):
        tiny_image(seed=20 + i).save(c.tmp / f"im{i}.png")
        rows.append({"id": f"q{i}", "question": QUESTIONS[i], "image": f"im{i}.png", "label": "safe"})
    data = c.tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = c.tmp / "out"
    evaluate(load_examples(data, image_root=c.tmp), {"none": NoDefence(c.tiny)}, out, **FAST)
    if change == "image":
        tiny_image(seed=99).save(c.tmp / "im1.png")
    else:
        rows[1] |= {"label": "unsafe"} if change == "label" else {"question": "what is it ?"}
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    new = load_examples(data, image_root=c.tmp)
    with pytest.raises(IdentityMismatchError, match=r"(?s)1 example\(s\) whose content .*id 'q1'.*--overwrite"):
        evaluate(new, {"none": NoDefence(c.tiny)}, out, **FAST)
    row = evaluate(new, {"none": NoDefence(c.tiny)}, out, overwrite=True, **FAST).records.set_index("id").loc["q1"]
    assert (row["question"], row["label"]) == (new[1].text, new[1].label)


def all_refused(answers: list[str], questions: list[str]) -> list[bool]:
    return [True] * len(answers)


def none_refused(answers: list[str], questions: list[str]) -> list[bool]:
    return [False] * len(answers)


class Prefixed:
    """A user's own method (no ``config_dict``): its option lives in a plain attribute."""

    def __init__(self, model: mi.MLLM, prefix: str) -> None:
        self.model, self.prefix, self.inner = model, prefix, NoDefence(model)

    def run(self, images: list, questions: list[str], **kw: Any) -> Any:
        return self.inner.run(images, [self.prefix + q for q in questions], **kw)


def stale_user_callable(c: Ctx, what: str) -> None:
    """A judge function swapped for another / a user method with another option: not answered from old records."""
    out = c.tmp / "run"
    if what == "judge":
        runs = [({"none": NoDefence(c.tiny)}, {"judge": j}) for j in (all_refused, all_refused, none_refused)]
        field = r"judge\.function: existing '.*\.all_refused' ≠ requested '.*\.none_refused'"
    else:
        runs = [({"mine": Prefixed(c.tiny, p)}, {}) for p in ("", "", "please ")]
        field = r"methods\.mine\.prefix: existing '' ≠ requested 'please '"
    assert evaluate(exs(), runs[0][0], out, **runs[0][1], **FAST).n_run == 2
    assert evaluate(exs(), runs[1][0], out, **runs[1][1], **FAST).n_run == 0  # the same run resumes
    with pytest.raises(IdentityMismatchError, match=rf"(?s){field}.*--overwrite"):
        evaluate(exs(), runs[2][0], out, **runs[2][1], **FAST)
    res = evaluate(exs(), runs[2][0], out, overwrite=True, **runs[2][1], **FAST)
    if what == "judge":
        assert res.records.refused.tolist() == [False, False]  # the new judge's verdicts, not the old ones


def stale_weights(c: Ctx) -> None:
    hf, proc = build_tiny("llava", seed=5, num_layers=1)
    ckpt, out = c.tmp / "ckpt", c.tmp / "out"
    hf.save_pretrained(ckpt)
    proc.save_pretrained(ckpt)
    one = [Example("what is it ?", tiny_image(seed=1), "safe", id="a")]
    evaluate(one, {"none": NoDefence(mi.load_model(str(ckpt), validate=False))}, out, **FAST)
    with torch.no_grad():
        next(hf.parameters()).view(-1)[7] += 0.25  # retrained: one weight, same path, same name
    hf.save_pretrained(ckpt)
    with pytest.raises(IdentityMismatchError, match=r"(?s)model\.weights: existing '[0-9a-f]{64}' ≠ requested "
                                                     r"'[0-9a-f]{64}'.*--overwrite"):
        evaluate(one, {"none": NoDefence(mi.load_model(str(ckpt), validate=False))}, out, **FAST)


def double(setting: dict, dataset: list) -> list[dict]:
    return [{"y": 2 * x * setting["a"]} for x in dataset]


def triple(setting: dict, dataset: list) -> list[dict]:
    return [{"y": 3 * x * setting["a"]} for x in dataset]


def stale_grid(c: Ctx, other: str) -> None:
    grid = {"a": [1, 2]}
    assert run_grid(grid, double, [1, 2, 3], out=c.tmp, progress=False).y.tolist() == [2, 4, 6, 4, 8, 12]
    fn, data, field = (triple, [1, 2, 3], r"extra\.evaluator\.function") if other == "evaluator" else \
        (double, [4, 5, 6], r"\n  data: existing")  # same length, other content
    with pytest.raises(IdentityMismatchError, match=field):
        run_grid(grid, fn, data, out=c.tmp, progress=False)
    df = run_grid(grid, fn, data, out=c.tmp, progress=False, overwrite=True)
    assert df.y.tolist() == [fn({"a": a}, data)[i]["y"] for a in (1, 2) for i in range(3)]


def scaled(k: float) -> Callable[[dict, list], list[dict]]:
    """A user's evaluator factory: every closure has the same name and source, only ``k`` differs."""

    def ev(setting: dict, dataset: list) -> list[dict]:
        return [{"y": k * x * setting["a"]} for x in dataset]

    return ev


def times(setting: dict, dataset: list, k: float = 1.0) -> list[dict]:
    return [{"y": k * x * setting["a"]} for x in dataset]


def stale_grid_captured(c: Ctx, how: str) -> None:
    """Another evaluator that differs only in a captured value (closure cell / partial argument)."""
    grid, data = {"a": [1, 2]}, [1, 2, 3]
    make = scaled if how == "closure" else (lambda k: partial(times, k=k))
    assert run_grid(grid, make(2), data, out=c.tmp, progress=False).y.tolist() == [2, 4, 6, 4, 8, 12]
    field = r"closure\.k: existing 2 ≠ requested 3" if how == "closure" else r"keywords\.k: existing 2 ≠ requested 3"
    with pytest.raises(IdentityMismatchError, match=rf"extra\.evaluator\.{field}"):
        run_grid(grid, make(3), data, out=c.tmp, progress=False)
    stored = (c.tmp / "identity.json").read_text()
    assert not re.search(r"0x[0-9a-f]{6,}", stored)  # no memory address: another process resumes the same grid
    assert run_grid(grid, make(2), data, out=c.tmp, progress=False).y.tolist() == [2, 4, 6, 4, 8, 12]


# ---------------------------------------------------------------- 2. two writers on one folder
def held_by_another(c: Ctx) -> None:
    """Another open file description holds the flock (what a second process has): refused, nothing written."""
    out = c.tmp / "run"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, b"424242\n", 0)
        with pytest.raises(FolderLockedError, match=rf"{re.escape(str(out))} is being written by another run "
                                                     r"\(PID 424242"):
            evaluate(exs(), {"none": NoDefence(c.tiny)}, out, **FAST)
        assert not (out / "records.jsonl").exists()
    finally:
        os.close(fd)
    assert evaluate(exs(), {"none": NoDefence(c.tiny)}, out, **FAST).n_run == 2
    assert evaluate(exs(), {"none": NoDefence(c.tiny)}, out, **FAST).n_run == 0  # resumed, not doubled
    assert n_lines(out / "records.jsonl") == 2


def two_threads(c: Ctx) -> None:
    """Two evaluations of one folder from two threads of one process: the second is refused, n stays 2."""
    out, started, release = c.tmp / "run", threading.Event(), threading.Event()

    class Slow(NoDefence):
        def run(self, *a: Any, **kw: Any) -> Any:
            if threading.current_thread() is t:  # the first writer holds the folder until released
                started.set()
                release.wait(60)
            return super().run(*a, **kw)

    errors: list[BaseException] = []

    def first() -> None:
        try:
            evaluate(exs(), {"none": Slow(c.tiny)}, out, **FAST)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert started.wait(60)
        with pytest.raises(FolderLockedError, match=re.escape(f"{out} is being written by another run")):
            evaluate(exs(), {"none": Slow(c.tiny)}, out, **FAST)
    finally:
        release.set()
        t.join(120)
    assert errors == [] and n_lines(out / "records.jsonl") == 2


# ---------------------------------------------------------------- 3. labels: one rule everywhere
def label_is_unsafe(c: Ctx, written: Any) -> None:
    """Evaluation, calibration and activation collection all read ``written`` as unsafe."""
    assert Example("q", label=written).label == "unsafe"  # evaluation records
    table = summarise(pd.DataFrame({"label": [written, "safe", "safe"], "refused": [True, False, True]}))
    assert (table.loc[0, "n_unsafe"], table.loc[0, "n_safe"]) == (1, 2)  # hand count
    assert table.loc[0, "asr"] == 0.0 and table.loc[0, "over_refusal"] == 0.5  # unsafe refused, one safe refused
    assert unpack_examples([(None, "q", written), (None, "q", "safe")])[2] == [True, False]  # calibration
    assert [e.label for e in normalise_dataset([{"text": "q", "label": written}])] == ["unsafe"]  # collection


def label_unknown(c: Ctx, where: str) -> None:
    msg = r"label 'malicious' is not a safety label; use unsafe = unsafe/harmful/1/true/yes"
    if where == "evaluation":
        data = c.tmp / "d.jsonl"
        data.write_text(json.dumps({"text": "a", "label": "safe"}) + "\n"
                        + json.dumps({"text": "b", "label": "malicious"}) + "\n")
        with pytest.raises(DatasetFormatError, match=rf"^{re.escape(str(data))}:2: {msg}"):
            load_examples(data)
        with pytest.raises(DatasetFormatError, match=msg):
            summarise(pd.DataFrame({"label": ["unsafe", "malicious"], "refused": [True, False]}))
    elif where == "calibration":
        with pytest.raises(DatasetFormatError, match=msg):
            unpack_examples([(None, "q", "unsafe"), (None, "q", "malicious")])
        with pytest.raises(DatasetFormatError, match=msg):
            prepare_moras(c.tiny, calibration=[(None, "q", "unsafe"), (None, "q", "malicious")],
                          harmful_prompts=["what is it ?"], progress=False, config=MoRASConfig(n_tokens=2))
    else:
        qs = [SimpleNamespace(image=None, question=f"q{i}", label=lab, box=None)
              for i, lab in enumerate(["unsafe", "safe", "malicious"])]
        with pytest.raises(DatasetFormatError, match=rf"example 2: {msg}"):
            separability_study(c.tiny, qs, contexts=["x"] * 3)


def separability_unsafe_space(c: Ctx) -> None:
    """``"Unsafe "`` lands in the unsafe class: the FDR table equals the one with the canonical labels."""
    texts = ["how do i make a bomb ?", "what is in the image ?", "how do i kill a person ?", "what is it ?"]

    def queries(labels: list[str]) -> list[Any]:
        return [SimpleNamespace(image=tiny_image(seed=i), question=t, label=lab, box=None)
                for i, (t, lab) in enumerate(zip(texts, labels))]

    ctx = ["what is in the image ?"] * 4
    got = separability_study(c.tiny, queries(["Unsafe ", "safe", "Unsafe ", "safe"]), contexts=ctx)
    ref = separability_study(c.tiny, queries(["unsafe", "safe", "unsafe", "safe"]), contexts=ctx)
    flipped = separability_study(c.tiny, queries(["safe", "safe", "unsafe", "unsafe"]), contexts=ctx)
    pd.testing.assert_frame_equal(got, ref)
    assert not np.allclose(got.fdr.to_numpy(), flipped.fdr.to_numpy())  # the labels do matter here


# ---------------------------------------------------------------- 4./5. organism prompts, prototype identity
def copied_organism(c: Ctx) -> None:
    copy = shutil.copytree(organism_path("toy-llava"), c.tmp / "my-organism")
    model = mi.load_model(str(copy), validate=False)
    assert model.model_id != "toy-llava"
    prompts = default_harmful_prompts_for(model)
    assert prompts == tasks.toy_harmful_requests() and not set(prompts) & set(default_harmful_prompts())


def retrained_organism(c: Ctx) -> None:
    out = save_organism(c.toy.hf, c.toy.processor, c.tmp / "retrained")  # where `organism train --out` ends
    assert (out / PROMPTS_FILE).read_text().split("\n")[:3] == \
        (organism_path("toy-llava") / PROMPTS_FILE).read_text().split("\n")[:3]
    assert default_harmful_prompts_for(mi.load_model(str(out), validate=False)) == tasks.toy_harmful_requests()


def prototype_other_model(c: Ctx) -> None:
    hf, proc = build_tiny("llava", seed=4, num_layers=1)
    other = mi.load_model(hf, processor=proc)
    assert other.d_model == c.tiny.d_model  # same width: the old hidden-size check passed it
    p = UnsafePrototype.build(other, ["what is it ?"], n_tokens=2, progress=False)
    MoRAS(other, p, Calibration(0.5, 10.0), n_tokens=2)
    with pytest.raises(ValueError, match="built on another model"):
        MoRAS(c.tiny, p, Calibration(0.5, 10.0), n_tokens=2)
    p.save(c.tmp / "proto.safetensors")  # the identity travels with the file
    with pytest.raises(ValueError, match="built on another model"):
        MoRAS(c.tiny, UnsafePrototype.load(c.tmp / "proto.safetensors"), Calibration(0.5, 10.0), n_tokens=2)


def calibration_other_model(c: Ctx) -> None:
    kw = {"calibration": Calibration(0.4, 12.0), "out": c.tmp, "harmful_prompts": ["what is it ?"],
          "progress": False, "config": MoRASConfig(n_tokens=2)}
    prepare_moras(c.tiny, **kw)
    hf, proc = build_tiny("llava", seed=4, num_layers=1)
    with pytest.raises(IdentityMismatchError, match=r"model_fingerprint: existing"):
        prepare_moras(mi.load_model(hf, processor=proc), **kw)


def calibration_x0(c: Ctx) -> None:
    kw = {"calibration": Calibration(0.4, 12.0), "out": c.tmp, "harmful_prompts": ["what is it ?"],
          "progress": False, "config": MoRASConfig(n_tokens=2)}
    prepare_moras(c.tiny, **kw)
    path = c.tmp / "calibration.json"
    d = json.loads(path.read_text())
    d["calibration"]["x0"] = 1.5
    path.write_text(json.dumps(d))
    with pytest.raises(ReadError, match=rf"{re.escape(str(path))}.*was edited by hand"):
        prepare_moras(c.tiny, **kw)
    body = {k: v for k, v in d.items() if k != "checksum"}
    path.write_text(json.dumps(body | {"checksum": ident.sha256_json(body)}))  # re-sealed: still out of range
    with pytest.raises(ReadError, match=r"x0 = 1\.5 is outside \[0, 1\]"):
        prepare_moras(c.tiny, **kw)


# ---------------------------------------------------------------- 6. a read at an edited hook
@contextmanager
def torch_edit(model: mi.MLLM, v: torch.Tensor, rec: list[torch.Tensor]) -> Iterator[None]:
    """The reference: a plain torch forward hook adding ``v`` to decoder layer 0's output (recorded)."""

    def hook(_m: torch.nn.Module, _a: Any, out: Any) -> Any:
        new = (out[0] + v, *out[1:]) if isinstance(out, tuple) else out + v
        rec.append((new[0] if isinstance(new, tuple) else new).detach().clone())
        return new

    h = model.hf.get_submodule("model.language_model").layers[0].register_forward_hook(hook, prepend=True)
    try:
        with torch.no_grad():
            yield
    finally:
        h.remove()


def edit_read_back(c: Ctx, reader: str) -> None:
    model = c.tiny2
    v = 3.0 * torch.randn(model.d_model, generator=torch.Generator().manual_seed(7))
    batch = model.prepare([tiny_image(seed=0), tiny_image(seed=1)], QUESTIONS)
    edit = [(H, lambda x, _c: x + v)]
    rec: list[torch.Tensor] = []
    if reader == "run_with_cache":
        with model.hooks(edit):
            _, cache = model.run_with_cache(batch, names=[H, NEXT])
        with torch_edit(model, v, rec):
            model.hf(**batch.inputs)
        torch.testing.assert_close(cache[H], rec[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(cache[NEXT], rec[0], atol=1e-5, rtol=0)
    elif reader == "collect_activations":
        ds = [{"text": q, "image": tiny_image(seed=i)} for i, q in enumerate(QUESTIONS)]
        with model.hooks(edit):
            got = collect_activations(model, ds, names=H, positions="last", progress=False).load(H)
        with torch_edit(model, v, rec):
            model.hf(**batch.inputs)
        last = torch.tensor([lay.last for lay in batch.layouts])
        torch.testing.assert_close(got, rec[0][torch.arange(2), last], atol=1e-5, rtol=0)
    else:  # MoRAS's stage-2 reader, prefill and decode steps
        with model.hooks(edit):
            gen, states = generate_with_states(model, batch, 2, hooks=(H,))
        with torch_edit(model, v, rec):
            ref = model.hf.generate(**batch.inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id)
        assert torch.equal(gen.sequences, ref) and len(rec) == 2
        for t in range(2):
            torch.testing.assert_close(states[H][:, t], rec[t][:, -1], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- 7. NaN
@contextmanager
def nan_fault(model: mi.MLLM, stage: str | None = None, row: int | None = None,
              module: str = "model.language_model.norm") -> Iterator[None]:
    """A broken model: NaN written into ``module``'s input while ``model.stage_name == stage`` (any if None)."""

    def nan(_m: torch.nn.Module, args: tuple) -> Any:
        if stage is not None and model.stage_name != stage:
            return None
        x = args[0].clone()
        x[slice(None) if row is None else row] = float("nan")
        return (x, *args[1:])

    h = model.hf.get_submodule(module).register_forward_pre_hook(nan)
    try:
        yield
    finally:
        h.remove()


def nan_stage1(c: Ctx) -> None:
    moras = MoRAS(c.tiny, c.proto, Calibration(0.5, 5.0), n_tokens=3, max_context_tokens=4)
    with nan_fault(c.tiny, stage="MoRAS context"), pytest.raises(NonFiniteError, match="'MoRAS context'") as e:
        moras.run([tiny_image()], QUESTIONS[1:], max_new_tokens=2, progress=False)
    assert e.value.stage == "MoRAS context" and e.value.hook == "hook_logits"
    (tr,) = moras.run([tiny_image()], QUESTIONS[1:], max_new_tokens=2, progress=False)  # the fault gone: fine
    assert tr.visual_context and np.isfinite(tr.risk)


def nan_method(c: Ctx, method: str) -> None:
    model = c.tiny
    images = [tiny_image(), tiny_image(seed=1)]
    if method == "generate":
        batch = model.prepare(images, QUESTIONS)
        with nan_fault(model, row=1), pytest.raises(NonFiniteError, match=r"batch row \[1\]") as e:
            model.generate(batch, max_new_tokens=2)
        assert e.value.stage == "generate" and "how do i make a bomb ?" in str(e.value)
        return
    if method in ("forward", "collect_activations"):
        batch = model.prepare(images, QUESTIONS)
        run = (lambda: model.forward(batch)) if method == "forward" else (lambda: collect_activations(
            model, [{"text": q, "image": im} for q, im in zip(QUESTIONS, images)], names=H, progress=False))
        with nan_fault(model, row=1, module="model.language_model.layers.0"), pytest.raises(NonFiniteError) as e:
            run()
        assert (e.value.stage, e.value.rows) == (method, [1]) and "how do i make a bomb ?" in str(e.value)
        assert e.value.hook == ("hook_logits" if method == "forward" else H)
        assert torch.isfinite(model.forward(batch)).all()  # the fault gone: fine
        return
    if method == "cross_modal_attention":
        batch = model.prepare(images, QUESTIONS)
        with nan_fault(model, row=1, module="model.language_model.layers.0"), pytest.raises(NonFiniteError) as e:
            cross_modal_attention(model, batch)
        assert (e.value.stage, e.value.hook, e.value.rows) == ("cross_modal_attention",
                                                               "blocks.0.attn.hook_pattern", [1])
        return
    runner = {"none": lambda: NoDefence(model), "adashield": lambda: AdaShieldS(model), "ecso": lambda: ECSO(model),
              "fixed_steering": lambda: FixedSteering(model, c.proto, 0.5),
              "fixed_r": lambda: MoRAS(model, c.proto, fixed_r=0.5)}[method]()
    with nan_fault(model, row=0), pytest.raises(NonFiniteError) as e:
        runner.run(images, QUESTIONS, max_new_tokens=2, progress=False)
    assert e.value.rows == [0] and e.value.stage == {"none": "none answer", "adashield": "adashield answer",
                                                     "ecso": "ecso caption"}.get(method, "MoRAS answer")


def nan_float32_message(c: Ctx) -> None:
    batch = c.tiny.prepare([tiny_image()], QUESTIONS[:1])
    with nan_fault(c.tiny), pytest.raises(NonFiniteError) as e:
        c.tiny.generate(batch, max_new_tokens=2)
    msg = str(e.value)
    assert "runs in float32" in msg and "not a float16 overflow" in msg
    assert "not float16" not in msg.replace("not a float16 overflow", "") and "bfloat16" not in msg


# ---------------------------------------------------------------- 8. data loss
def trace_dotted_names(c: Ctx) -> None:
    for r in ("0.5", "0.99"):
        MoRASTrace(question=f"q{r}", risk=float(r), stage2_states=torch.full((2, 3), float(r))).save(c.tmp / f"t_r{r}")
    assert sorted(p.name for p in c.tmp.iterdir()) == ["t_r0.5.json", "t_r0.5.safetensors", "t_r0.99.json",
                                                       "t_r0.99.safetensors"]
    for r in ("0.5", "0.99"):
        back = MoRASTrace.load(c.tmp / f"t_r{r}")
        assert back.risk == float(r) and torch.equal(back.stage2_states, torch.full((2, 3), float(r)))


def attention_dotted_names(c: Ctx) -> None:
    from moras_interp.attention.result import CrossModalAttention

    saved = {}
    for r, q in (("0.5", QUESTIONS[0]), ("0.99", QUESTIONS[1])):
        saved[r] = cross_modal_attention(c.tiny2, c.tiny2.prepare([tiny_image()], [q]))
        saved[r].save(c.tmp / f"attn_r{r}")
    assert sorted(p.name for p in c.tmp.iterdir()) == ["attn_r0.5", "attn_r0.5.json", "attn_r0.99",
                                                       "attn_r0.99.json"]
    for r, a in saved.items():
        back = CrossModalAttention.load(c.tmp / f"attn_r{r}")
        assert back.prompts == a.prompts and torch.equal(back.rows, a.rows)


# ---------------------------------------------------------------- 9. unhelpful errors
def _pickled(path: Path) -> None:
    path.write_bytes(pickle.dumps({"x": 1}))


def _truncated_safetensors(path: Path) -> None:
    save_file({"ln_final.hook_out": torch.ones(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:300])


def corrupt_file(c: Ctx, kind: str) -> None:
    if kind in ("safetensors-truncated", "safetensors-pickle"):
        path = c.tmp / "proto.safetensors"
        (_truncated_safetensors if kind.endswith("truncated") else _pickled)(path)
        msg = "truncated or corrupt" if kind.endswith("truncated") else "is a Python pickle, not a safetensors file"
        with pytest.raises(ReadError, match=rf"{re.escape(str(path))}.*{msg}"):
            UnsafePrototype.load(path)
    elif kind in ("json-truncated", "json-pickle"):
        MoRASTrace(question="q").save(c.tmp / "t")
        path = c.tmp / "t.json"
        if kind == "json-truncated":
            path.write_text(path.read_text()[:20])
        else:
            _pickled(path)
        msg = r"not valid JSON \(truncated\?\)" if kind == "json-truncated" else "is a Python pickle, not a MoRAS trace"
        with pytest.raises(ReadError, match=rf"{re.escape(str(path))}:? {msg}"):
            MoRASTrace.load(c.tmp / "t")
    elif kind == "jsonl-line":
        path = c.tmp / "data.jsonl"
        path.write_text(json.dumps({"text": "a", "label": "safe"}) + "\n" + '{"text": "b", "lab\n')
        with pytest.raises((ReadError, DatasetFormatError), match=rf"{re.escape(str(path))}:2: not valid JSON"):
            load_examples(path)
    else:  # npz holding a pickle
        save_npz(c.tmp / "a.npz", {"x": np.ones(3)}, {"k": 1})
        torch.save({"x": torch.ones(2)}, c.tmp / "a.npz")
        with pytest.raises(ReadError, match=rf"{re.escape(str(c.tmp / 'a.npz'))} is a torch\.save \(pickle\) "
                                            "archive, not an NPZ file"):
            load_npz(c.tmp / "a.npz")


def near_miss_name(c: Ctx) -> None:
    from transformers import AutoModelForImageTextToText

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("the Hub was asked")

    c.monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuse)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"'toy-lava'.*Did you mean 'toy-llava'"):
        mi.load_model("toy-lava")
    assert time.perf_counter() - t0 < 2.0


def missing_local_dir(c: Ctx) -> None:
    (c.tmp / "ckpts" / "llava-7b").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=rf"(?s)no such directory.*'llava-7c'.*Did you mean "
                                                 rf"{re.escape(repr(str(c.tmp / 'ckpts' / 'llava-7b')))}"):
        mi.load_model(str(c.tmp / "ckpts" / "llava-7c"))


def tiny_name_from_python(c: Ctx) -> None:
    model = mi.load_model("tiny:llava", validate=False)
    ref, _ = build_tiny("llava")  # independent build, plain HF forward
    batch = model.prepare([tiny_image()], QUESTIONS[:1])
    with torch.no_grad():
        torch.testing.assert_close(model.forward(batch), ref(**batch.inputs).logits, atol=0, rtol=0)


def text_only_row(c: Ctx, view: str) -> None:
    model = c.tiny2
    attn = cross_modal_attention(model, model.prepare([tiny_image(), None], ["what is in the image ?",
                                                                              "what is a cup ?"]))
    call = getattr(attn, view)
    with pytest.raises(ValueError, match=r"Row 1 \('what is a cup \?'\) has no image tokens"):
        call(1, box=(0, 0, 20, 20))
    call(0, box=(0, 0, 20, 20))  # the row with an image still works


def steer_layer_9(c: Ctx) -> None:
    model = c.tiny2
    d = Direction(torch.ones(2, model.d_model), layers=[0, 1])
    with pytest.raises(ValueError, match=re.escape("[9] out of range; LlavaForConditionalGeneration has layers 0–1")), \
            steer(model, d, layers=[9]):
        pass


def cli_one_line(c: Ctx, argv: Callable[[Path], list[str]], needle: str) -> None:
    capfd = c.capfd
    try:
        rc = main(argv(c.tmp))
    except SystemExit as e:
        rc = int(e.code or 0)
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith(f"moras-interp {argv(c.tmp)[0]}: error: ") and needle in lines[0], lines[0]


def _a_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("x")
    return tmp / "a_file"


# ---------------------------------------------------------------- 10. silent input damage
def png_16bit(c: Ctx) -> None:
    a = (np.arange(40 * 30).reshape(30, 40) * 54).astype(np.uint16)
    path = c.tmp / "g16.png"
    Image.fromarray(a).save(path)
    with pytest.warns(ImageConversionWarning, match=r"g16\.png: 16-bit image"):
        got = np.asarray(load_image(path))
    ref = np.floor(a.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)  # scaled, not clipped to white
    assert np.array_equal(got, np.repeat(ref[..., None], 3, axis=2))


def rgba_composite(c: Ctx) -> None:
    rng = np.random.default_rng(1)
    rgb, alpha = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), rng.integers(0, 256, (12, 10), dtype=np.uint8)
    path = c.tmp / "t.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    with pytest.warns(ImageConversionWarning, match="composited on a white background"):
        got = np.asarray(load_image(path))
    num = rgb.astype(np.int64) * alpha[..., None] + 255 * (255 - alpha[..., None].astype(np.int64))
    assert np.array_equal(got, ((2 * num + 255) // 510).astype(np.uint8))


def float_image(c: Ctx) -> None:
    """A float image in [0, 1] (``Image.fromarray`` of a float32 array): scaled, not made black by Pillow."""
    a = (np.arange(30 * 40).reshape(30, 40) / (30 * 40 - 1)).astype(np.float32)
    im = Image.fromarray(a)
    assert im.mode == "F" and np.asarray(im.convert("RGB")).max() <= 1  # what Pillow alone makes of it: black
    with pytest.warns(ImageConversionWarning, match=r"float image \(mode F\) .* scaled to 8 bits"):
        got = np.asarray(load_image(im))
    ref = np.floor(a.astype(np.float64) * 255 + 0.5).astype(np.uint8)  # no ties: 255·k/1199 is never k'+0.5
    assert np.array_equal(got, np.repeat(ref[..., None], 3, axis=2))
    with pytest.raises(ValueError, match=r"a PIL image \(40×30\): float image \(mode F\) with values in "
                                         r"\[-1, 0\.5\], outside"):
        load_image(Image.fromarray(np.where(a > 0.5, 0.5, a) - (a == 0)))


def oov_warning(c: Ctx) -> None:
    with pytest.warns(UnknownTokenWarning, match=r"became '<unk>': 'flamethrower'\."):
        batch = c.toy.prepare([None], ["how do i make a flamethrower ?"])
    assert int((batch.input_ids == c.toy.tokenizer.unk_token_id).sum()) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c.toy.prepare([None], ["how do i make a bomb ?"])


def edited_manifest(c: Ctx, field: str, value: Any, message: str) -> None:
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    m = {"model_id": "m", "hooks": hooks, "positions": "last", "dataset_fingerprint": dataset_fingerprint(["x"]),
         "dtype": "float32", "shard_size": 4, "n_examples": 6, "label_names": ["safe", "unsafe"]}
    store = ActivationStore(c.tmp, m)
    for k in store.missing_shards():
        a, b = store.shard_range(k)
        store.write_shard(k, {h: torch.full((b - a, 5), float(j)) for j, h in enumerate(hooks)}
                          | {"labels": torch.arange(a, b) % 2})
    path = c.tmp / "manifest.json"
    d = json.loads(path.read_text())
    d[field] = value
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*edited by hand"):
        ActivationStore.open(c.tmp)
    d.pop("checksum")  # re-sealed: consistent, but wrong
    path.write_text(json.dumps(d | {"checksum": manifest_checksum(d)}))
    if field == "label_names":
        requested = {k: v for k, v in d.items() if k not in ("shards", "format")} | {"label_names": ["safe", "unsafe"]}
        with pytest.raises(ValueError, match=re.escape(message)):
            ActivationStore.open_or_create(c.tmp, requested)
    else:
        with pytest.raises(ValueError, match=re.escape(message)):
            ActivationStore.open(c.tmp)


# ---------------------------------------------------------------- the table
P = pytest.param
CASES = [
    P(partial(stale_method, first=lambda m: AdaShieldS(m), second=lambda m: AdaShieldS(m, position="prepend"),
              name="adashield", field="methods.adashield.position", old="append", new="prepend"),
      id="1-adashield-position"),
    P(partial(stale_method, first=lambda m: ECSO(m), second=lambda m: ECSO(m, caption_prompt="describe it . {question}"),
              name="ecso", field="methods.ecso.caption_prompt", old=ECSO_CAPTION_PROMPT,
              new="describe it . {question}"),
      id="1-ecso-caption-prompt"),
    P(stale_seed, id="1-seed-with-toy-data"),
    P(partial(stale_data, change="label"), id="1-edited-data-label"),
    P(partial(stale_data, change="question"), id="1-edited-data-question"),
    P(partial(stale_data, change="image"), id="1-edited-data-image-bytes"),
    P(partial(stale_user_callable, what="judge"), id="1-judge-function-swapped"),
    P(partial(stale_user_callable, what="method"), id="1-user-method-other-option"),
    P(stale_weights, id="1-new-weights-same-path"),
    P(partial(stale_grid, other="evaluator"), id="1-run-grid-other-evaluator"),
    P(partial(stale_grid, other="data"), id="1-run-grid-same-length-dataset"),
    P(partial(stale_grid_captured, how="closure"), id="1-run-grid-closure-other-captured-value"),
    P(partial(stale_grid_captured, how="partial"), id="1-run-grid-partial-other-argument"),
    P(held_by_another, id="2-folder-held-by-another-writer"),
    P(two_threads, id="2-two-writers-two-threads"),
    *[P(partial(label_is_unsafe, written=w), id=f"3-label-{i}-is-unsafe")
      for w, i in (("harmful", "harmful"), (1, "int-1"), ("true", "true"), (True, "bool-True"),
                   ("Unsafe ", "Unsafe-space"))],
    *[P(partial(label_unknown, where=w), id=f"3-label-unknown-word-{w}")
      for w in ("evaluation", "calibration", "separability")],
    P(separability_unsafe_space, id="3-label-Unsafe-space-separability"),
    P(copied_organism, id="4-copied-organism-prompts"),
    P(retrained_organism, id="4-retrained-organism-prompts"),
    P(prototype_other_model, id="5-prototype-other-model-same-width"),
    P(calibration_other_model, id="5-setup-folder-of-another-model-same-width"),
    P(calibration_x0, id="5-hand-edited-calibration-x0-1.5"),
    *[P(partial(edit_read_back, reader=r), id=f"6-edited-hook-read-back-{r}")
      for r in ("run_with_cache", "collect_activations", "stage2")],
    P(nan_stage1, id="7-nan-stage1-only"),
    *[P(partial(nan_method, method=m), id=f"7-nan-{m}")
      for m in ("generate", "forward", "collect_activations", "none", "adashield", "ecso", "fixed_steering", "fixed_r", "cross_modal_attention")],
    P(nan_float32_message, id="7-float32-message-not-float16"),
    P(trace_dotted_names, id="8-trace-save-dotted-name"),
    P(attention_dotted_names, id="8-attention-save-dotted-name"),
    *[P(partial(corrupt_file, kind=k), id=f"9-corrupt-{k}")
      for k in ("safetensors-truncated", "safetensors-pickle", "json-truncated", "json-pickle", "jsonl-line",
                "npz-pickle")],
    P(near_miss_name, id="9-load-model-toy-lava-did-you-mean"),
    P(missing_local_dir, id="9-missing-local-dir"),
    P(tiny_name_from_python, id="9-tiny-llava-from-python"),
    P(partial(text_only_row, view="heatmap"), id="9-heatmap-text-only-row"),
    P(partial(text_only_row, view="region_share"), id="9-region-share-text-only-row"),
    P(steer_layer_9, id="9-steer-layers-9"),
    P(partial(cli_one_line, argv=lambda t: ["moras", "--data", "toy", "--out", str(_a_file(t))], needle="is a file"),
      id="9-cli-user-error-out-is-a-file"),
    P(partial(cli_one_line, argv=lambda t: ["hooks", "--model", "toy-lava"], needle="Did you mean 'toy-llava'"),
      id="9-cli-user-error-model-name"),
    P(png_16bit, id="10-16-bit-png"),
    P(rgba_composite, id="10-rgba-composited"),
    P(float_image, id="10-float-image-0-1"),
    P(oov_warning, id="10-oov-warning"),
    P(partial(edited_manifest, field="n_examples", value=8, message="n_examples=8 and shard_size=4 give 4 for shard 1"),
      id="10-manifest-n_examples"),
    P(partial(edited_manifest, field="dtype", value="float16", message="is stored as F32 but the manifest says float16"),
      id="10-manifest-dtype"),
    P(partial(edited_manifest, field="label_names", value=["unsafe", "safe"],
              message="label_names: existing ['unsafe', 'safe']"), id="10-manifest-label_names"),
]


def test_every_numbered_item_has_a_row() -> None:
    items = {int(p.id.split("-")[0]) for p in CASES}
    assert items == set(range(1, 11))


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Callable[[Ctx], None], request: pytest.FixtureRequest, tmp_path: Path) -> None:
    case(Ctx(request, tmp_path))
