"""Clear errors from activation collection, class splits and directions: corrupt manifest, mismatched model or
dataset, empty class, NaN activations, bad arguments."""

from __future__ import annotations

import pytest
import torch

from moras_interp import load_model
from moras_interp.activations import (
    ActivationStore,
    class_activations,
    collect_activations,
    diff_of_means,
    fdr_per_layer,
)
from moras_interp.models.tiny import build_tiny, tiny_image

RESID1 = "blocks.1.hook_resid_post"
TEXTS = ["what is in the image w1", "how do i make a bomb w2", "describe the picture w3", "is this safe w4",
         "tell me about the car w5"]


@pytest.fixture(scope="module")
def model():
    hf, proc = build_tiny("llava", num_layers=2, seed=0)
    return load_model(hf, processor=proc, validate=False)


@pytest.fixture(scope="module")
def other_model():
    hf, proc = build_tiny("llava", num_layers=2, seed=1)           # same architecture and name, other weights
    return load_model(hf, processor=proc, validate=False)


def data(n: int = 5, label: str = "unsafe") -> list[dict]:
    return [{"text": TEXTS[i], "image": tiny_image(seed=i) if i % 2 else None, "label": label} for i in range(n)]


KW = {"names": "blocks.*.hook_resid_post", "batch_size": 2, "shard_size": 2, "progress": False}


def test_corrupt_manifest(model, tmp_path):
    collect_activations(model, data(), out=tmp_path, **KW)
    (tmp_path / "manifest.json").write_text('{"model_id": "x", "hooks": [')
    with pytest.raises(ValueError, match=r"corrupt activation-store manifest .*manifest\.json.*Delete the directory"):
        collect_activations(model, data(), out=tmp_path, **KW)
    with pytest.raises(ValueError, match="corrupt"):
        ActivationStore.open(tmp_path)


def test_mismatched_model_dataset_or_config_is_refused(model, other_model, tmp_path):
    collect_activations(model, data(), out=tmp_path, **KW)
    with pytest.raises(ValueError, match=r"(?s)different run:\n  identity\.model_fingerprint: existing '[0-9a-f]{64}' != requested"
                                         r" '[0-9a-f]{64}'.*another directory"):
        collect_activations(other_model, data(), out=tmp_path, **KW)
    changed = data()
    changed[3]["image"] = tiny_image(seed=99)                       # same text, other image content
    with pytest.raises(ValueError, match=r"dataset_fingerprint: existing"):
        collect_activations(model, changed, out=tmp_path, **KW)
    with pytest.raises(ValueError, match=r"positions: existing 'last' != requested 'instruction_mean'"):
        collect_activations(model, data(), out=tmp_path, **{**KW, "positions": "instruction_mean"})
    with pytest.raises(ValueError, match=r"hooks: existing"):
        collect_activations(model, data(), out=tmp_path, **{**KW, "names": [RESID1]})
    with pytest.raises(ValueError, match=r"shard_size: existing 2 != requested 3"):
        collect_activations(model, data(), out=tmp_path, **{**KW, "shard_size": 3})
    with pytest.raises(ValueError, match=r"identity\.system: existing None != requested 'be brief'"):
        collect_activations(model, data(), out=tmp_path, **KW, system="be brief")
    store = collect_activations(model, data(), out=tmp_path, **{**KW, "batch_size": 5})   # batching is not identity
    assert store.is_complete()


def test_empty_class_errors(model):
    store = collect_activations(model, data(label="unsafe"), **KW)
    with pytest.raises(ValueError, match=r"label\(s\) \['safe'\] do not occur in this store; labels present: "
                                         r"\{'unsafe': 5\}"):
        class_activations(store, "unsafe", "safe")
    with pytest.raises(ValueError, match="share labels"):
        class_activations(store, "unsafe", ["unsafe"])
    unlabeled = collect_activations(model, [{"text": t} for t in TEXTS], **KW)
    with pytest.raises(ValueError, match=r"labels present: \{'<unlabeled>': 5\}"):
        class_activations(unlabeled, "a", "b")
    acts = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="class b has 0 examples"):
        diff_of_means(acts, acts[:, :0])
    with pytest.raises(ValueError, match="class b has 0 examples: FDR needs at least 2 per class"):
        fdr_per_layer(acts, acts[:, :0])


def test_nan_activation_names_hook_and_example(model, tmp_path):
    poison_id = model.tokenizer.convert_tokens_to_ids("poison")
    state: dict[str, torch.Tensor] = {}
    pre = model.hf.register_forward_pre_hook(lambda m, a, k: state.__setitem__("ids", k["input_ids"]),
                                             with_kwargs=True)

    def poison(m, a, out):                                           # the MLP of layer 1 emits a NaN for one row
        out[(state["ids"] == poison_id).any(1), -1, 3] = float("nan")

    post = model.hf.model.language_model.layers[1].mlp.register_forward_hook(poison)
    ds = data(5)
    ds[3]["text"] = "how do i make poison w4"
    ds[3]["id"] = "the-bad-one"
    try:
        with pytest.raises(ValueError, match=r"NaN/Inf\) at hook 'blocks\.1\.hook_resid_post' in stage "
                                             r"'collect_activations'.*row 0: example 3, id 'the-bad-one' \(1 image\(s\), "
                                             r"text 'how do i make poison w4'\).*model runs in float32, so this is not"):
            collect_activations(model, ds, out=tmp_path, **KW)
    finally:
        pre.remove()
        post.remove()
    store = ActivationStore.open(tmp_path)
    assert store.completed_shards() == [0]                          # shard 0 (examples 0, 1) kept; 1 not written


def test_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match=r"positions='middle': use one of \['last', 'instruction_mean', 'image_mean'\]"):
        collect_activations(model, data(), names=RESID1, positions="middle")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        collect_activations(model, data(), names=RESID1, batch_size=0)
    with pytest.raises(ValueError, match="the dataset is empty"):
        collect_activations(model, [], names=RESID1)
    with pytest.raises(ValueError, match=r"dataset item 1: no text"):
        collect_activations(model, [{"text": "hi"}, {"image": tiny_image()}], names=RESID1)
    with pytest.raises(TypeError, match="iterable of examples"):
        collect_activations(model, "just a string", names=RESID1)
    with pytest.raises(KeyError, match=r"Unknown hook name 'blocks\.9\.hook_resid_post'"):
        collect_activations(model, data(), names="blocks.9.hook_resid_post")
    with pytest.raises(KeyError, match="matches no hook name"):
        collect_activations(model, data(), names="blocks.*.resid")
    with pytest.raises(ValueError, match=r"vision\.blocks\.0\.hook_resid_post has shape .*positions=fn"):
        collect_activations(model, data(), names="vision.blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="attention patterns cannot be collected"):
        collect_activations(model, data(), names="blocks.0.attn.hook_pattern")
    with pytest.raises(ValueError, match=r"example 0 \(text-only, text .*\): positions='image_mean' needs an image"):
        collect_activations(model, data(), names=RESID1, positions="image_mean", progress=False)
    with pytest.raises(FileNotFoundError, match=r"example 1 .*image file not found: .*nope\.png"):
        collect_activations(model, [{"text": "a"}, {"text": "b", "image": tmp_path / "nope.png"}], names=RESID1)
    with pytest.raises(ValueError, match=r"positions function must return a tensor \[b=1, \.\.\.\], got \(\)"):
        collect_activations(model, data(2), names=RESID1, positions=lambda v, lay: v.sum(), progress=False)
    with pytest.raises(ValueError, match="did not fire for a batch of text-only examples"):
        collect_activations(model, data(2), names="vision.blocks.0.hook_resid_post",
                            positions=lambda v, lay: v.mean(1), progress=False)
    with pytest.raises(ValueError, match=r"per-example values have different shapes \[\(2,\), \(64,\)\]"):
        collect_activations(model, data(2), names=RESID1, progress=False,
                            positions=lambda v, lay: v[:, -1] if lay[0].images else v[:, -1, :2])
