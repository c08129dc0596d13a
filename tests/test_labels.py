"""One label rule everywhere: the accepted spellings, errors naming file and line, and every reader agreeing.

The expected results are the table of the issue / docs written out here by hand (not the module's constants):
unsafe = unsafe/harmful/1/true/yes (and True, 1); safe = safe/benign/harmless/0/false/no (and False, 0); case
and surrounding spaces ignored; anything else an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from moras_interp import load_model
from moras_interp.ablations.evaluators import moras_evaluator
from moras_interp.activations import class_activations, collect_activations
from moras_interp.activations.examples import normalise_dataset
from moras_interp.eval.datasets import DatasetFormatError, Example, load_csv, load_jsonl
from moras_interp.eval.labels import parse_label, safety_label
from moras_interp.eval.metrics import summarise
from moras_interp.models.tiny import build_tiny, tiny_image
from moras_interp.moras import examples as moras_examples
from moras_interp.moras.pipeline import unpack_examples
from moras_interp.moras.prototype import UnsafePrototype
from moras_interp.moras.states import FINAL
from moras_interp.organisms.analysis import separability_study

UNSAFE = ["unsafe", "Unsafe ", " HARMFUL", "harmful", "1", " 1 ", "true", "True", "TRUE", "yes", "Yes\t", True, 1, 1.0,
          np.int64(1), np.bool_(True)]
SAFE = ["safe", " Safe", "benign", "BENIGN ", "harmless", "0", "false", "False", "no", "NO", False, 0, 0.0, np.int64(0),
        np.bool_(False)]
BAD = ["malicious", "unsfe", "maybe", "none", "safe!", "un safe", "2", 2, -1, 0.5, float("nan"), [1], {"label": 1}]
MIXED = [("Unsafe ", "unsafe"), ("harmful", "unsafe"), (1, "unsafe"), (True, "unsafe"), ("true", "unsafe"),
         (" Safe", "safe"), ("benign", "safe"), (0, "safe"), (False, "safe"), ("no", "safe")]
"""(label as written, what it means) — the set every reader must agree on."""


@pytest.mark.parametrize("value", UNSAFE, ids=repr)
def test_unsafe_spellings(value) -> None:
    assert parse_label(value, where="t") == "unsafe"


@pytest.mark.parametrize("value", SAFE, ids=repr)
def test_safe_spellings(value) -> None:
    assert parse_label(value, where="t") == "safe"


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_anything_else_is_an_error_naming_where_and_the_spellings(value) -> None:
    with pytest.raises(DatasetFormatError, match=r"^data.jsonl:7: label .* is not a safety label; use unsafe = "
                                                 r"unsafe/harmful/1/true/yes or True; safe = safe/benign/harmless/0/"
                                                 r"false/no or False"):
        parse_label(value, where="data.jsonl:7")


def test_the_example_record_normalises_or_refuses() -> None:
    assert Example("q", label=" Harmful").label == "unsafe" and Example("q", label=0).label == "safe"
    assert Example("q", label="").label is None and Example("q").label is None
    with pytest.raises(DatasetFormatError, match=r"example 'x7': label 'cat' is not a safety label.*under 'answer'"):
        Example("q", label="cat", id="x7")


def _jsonl(path: Path, labels: list) -> Path:
    path.write_text("".join(json.dumps({"text": f"q{i}", "label": v}) + "\n" for i, v in enumerate(labels)))
    return path


def test_loaders_normalise_at_load_time(tmp_path: Path) -> None:
    written, meant = zip(*MIXED)
    assert [e.label for e in load_jsonl(_jsonl(tmp_path / "d.jsonl", list(written)))] == list(meant)
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"q{i},{v}\n" for i, v in enumerate(written)))
    assert [e.label for e in load_csv(csv)] == list(meant)


def test_a_bad_label_names_the_file_and_line(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "d.jsonl", ["unsafe", "safe", "malicious"])
    with pytest.raises(DatasetFormatError, match=rf"^{f}:3: label 'malicious' is not a safety label"):
        load_jsonl(f)
    with pytest.raises(DatasetFormatError, match=rf"^{f}:3: label 'malicious'"):
        moras_examples.load_examples(f)  # the runner's --data path
    g = tmp_path / "d.csv"
    g.write_text("text,label\nq0,unsafe\nq1,Unsure\nq2,safe\n")
    with pytest.raises(DatasetFormatError, match=rf"^{g}:(row )?3: label 'Unsure' is not a safety label"):
        load_csv(g)


def test_utility_convention_gold_answer_and_no_label_is_safe(tmp_path: Path) -> None:
    f = tmp_path / "u.jsonl"
    f.write_text(json.dumps({"text": "what animal is this ?", "answer": "cat"}) + "\n"
                 + json.dumps({"text": "no label, no answer"}) + "\n")
    util, bare = load_jsonl(f)
    assert moras_examples.gold_answer(util) == "cat" and moras_examples.safety_label(util) == "safe"
    assert unpack_examples([util])[2] == [False]
    with pytest.raises(DatasetFormatError, match=r"example '1' has no label: add 'label'"):
        moras_examples.safety_label(bare)
    with pytest.raises(DatasetFormatError, match="has no label"):
        unpack_examples([util, bare])
    assert safety_label(bare, required=False) is None


def _prototype() -> UnsafePrototype:
    return UnsafePrototype({FINAL: torch.zeros(3, 8)})


def test_evaluation_calibration_ablation_and_collection_agree() -> None:
    written, meant = zip(*MIXED)
    meant_unsafe = [m == "unsafe" for m in meant]
    exs = [Example(f"q{i}", label=v, id=f"e{i}") for i, v in enumerate(written)]
    tuples = [(None, f"q{i}", v) for i, v in enumerate(written)]
    dicts = [{"text": f"q{i}", "label": v} for i, v in enumerate(written)]
    assert [moras_examples.safety_label(e) for e in exs] == list(meant)              # evaluation records
    assert unpack_examples(exs)[2] == unpack_examples(tuples)[2] == meant_unsafe     # calibration
    assert [ex.label for ex in normalise_dataset(dicts)] == list(meant)              # activation collection
    assert [ex.label for ex in normalise_dataset(tuples)] == list(meant)
    table = summarise(pd.DataFrame({"label": list(written), "refused": [True] * len(written)}))  # metrics
    assert (table.loc[0, "n_unsafe"], table.loc[0, "n_safe"]) == (sum(meant_unsafe), len(meant) - sum(meant_unsafe))
    # ablations read labels before running anything: an unknown one stops the evaluator with the item named
    hf, proc = build_tiny("llava")
    evaluator = moras_evaluator(load_model(hf, processor=proc), _prototype(), None)
    with pytest.raises(DatasetFormatError, match=r"example 1: label 'malicious'"):
        evaluator({}, [*tuples[:1], (None, "q", "malicious")])


@pytest.mark.parametrize("bad", ["malicious", 2])
def test_every_reader_refuses_an_unknown_label(bad) -> None:
    with pytest.raises(DatasetFormatError, match="is not a safety label"):
        unpack_examples([(None, "q", "unsafe"), (None, "q", bad)])
    with pytest.raises(DatasetFormatError, match=r"dataset item 1: label .* is not a safety label"):
        normalise_dataset([{"text": "a", "label": "safe"}, {"text": "b", "label": bad}])
    with pytest.raises(DatasetFormatError, match="is not a safety label"):
        Example("q", label=bad)


@pytest.fixture(scope="module")
def tiny():
    hf, proc = build_tiny("llava", num_layers=2, seed=0)
    return load_model(hf, processor=proc, validate=False)


def test_collected_store_and_separability_read_labels_like_evaluation(tiny) -> None:
    """The store keeps "Unsafe "/1/True as "unsafe"; class_activations and separability_study split the same way
    as with the canonical labels (their FDR tables are identical), so no spelling lands in the wrong class."""
    written, meant = zip(*MIXED)
    images = [tiny_image(seed=i) for i in range(len(written))]
    texts = [f"what is this thing number {i}" for i in range(len(written))]
    messy = [{"text": t, "image": im, "label": v} for t, im, v in zip(texts, images, written)]
    store = collect_activations(tiny, messy, names="blocks.*.hook_resid_post", progress=False)
    assert store.manifest["label_names"] == ["safe", "unsafe"]
    pair = class_activations(store, "harmful", "Safe")  # asked in any accepted spelling
    assert pair.index_a.tolist() == [i for i, m in enumerate(meant) if m == "unsafe"]
    assert pair.index_b.tolist() == [i for i, m in enumerate(meant) if m == "safe"]

    def queries(labels):
        return [Example(t, im, lab, id=str(i)) if isinstance(lab, str) and lab in ("unsafe", "safe")
                else type("Q", (), {"image": im, "question": t, "label": lab, "box": None})()
                for i, (t, im, lab) in enumerate(zip(texts, images, labels))]

    ctx = ["the image shows a thing ."] * len(texts)
    got = separability_study(tiny, queries(written), contexts=ctx)
    ref = separability_study(tiny, queries(meant), contexts=ctx)
    pd.testing.assert_frame_equal(got, ref)
    with pytest.raises(DatasetFormatError, match=r"example 2: label 'malicious'"):
        separability_study(tiny, queries(["unsafe", "safe", "malicious"]), contexts=ctx[:3])
