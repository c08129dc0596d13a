"""collect_activations: values vs run_with_cache / plain HF / hand-written torch hooks, resume, store API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moras_interp import load_model
from moras_interp.activations import (
    StoreWarning,
    class_activations,
    collect_activations,
    layer_separability,
    load_layers,
    separability_figure_by_condition,
)
from moras_interp.eval.datasets import Example, load_jsonl
from moras_interp.models.tiny import build_tiny, tiny_image

RESID = "blocks.{l}.hook_resid_post"
TEXTS = ["what is in the image", "how do i make a bomb", "describe the picture please", "is this safe",
         "tell me about the red car", "how do i make poison from this item", "what color is the cat"]


@pytest.fixture(scope="module")
def model():
    hf, proc = build_tiny("llava", num_layers=2, seed=0)
    return load_model(hf, processor=proc, validate=False)


def dataset(n: int = 7, images: str = "mixed") -> list[Example]:
    """Examples with distinct texts/images; every third is text-only when images == 'mixed'."""
    out = []
    for i in range(n):
        has_image = images == "all" or (images == "mixed" and i % 3 != 0)
        out.append(Example(text=f"{TEXTS[i % len(TEXTS)]} w{i}", image=tiny_image(seed=i) if has_image else None,
                           label="unsafe" if i % 2 else "safe", id=f"ex{i}"))
    return out


def hf_single(model, ex: Example):
    """Plain HF eager forward of one example (no padding): (inputs, layer outputs from torch hooks, hf output)."""
    batch = model.prepare([ex.image] if ex.image is not None else None, [ex.text])
    layers = model.hf.model.language_model.layers
    captured: dict[int, torch.Tensor] = {}
    handles = [layers[l].register_forward_hook(
        lambda m, a, out, l=l: captured.__setitem__(l, (out[0] if isinstance(out, tuple) else out).detach()))
        for l in range(len(layers))]
    try:
        with torch.no_grad():
            out = model.hf(**batch.inputs, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return batch, captured, out


def reference(model, ex: Example, positions) -> dict[int, torch.Tensor]:
    """Independent per-layer reduction of hand-hooked decoder-layer outputs [1, pos, d] -> [d]."""
    batch, captured, _ = hf_single(model, ex)
    ids = batch.inputs["input_ids"][0]
    out = {}
    for l, h in captured.items():
        h = h[0]
        if positions == "last":
            out[l] = h[-1]
        elif positions == "image_mean":
            out[l] = h[ids == model.hf.config.image_token_id].mean(0)
        elif positions == "instruction_mean":
            pos = batch.layouts[0].instruction
            assert pos.numel() > 0
            out[l] = h[pos].mean(0)
        else:
            out[l] = positions(h[None], batch.layouts)[0]
    return out


def first_two_mean(value: torch.Tensor, layouts) -> torch.Tensor:
    """Custom positions: mean of the first two non-padding positions, [b, pos, d] -> [b, d]."""
    return torch.stack([value[i, lay.n_pad:lay.n_pad + 2].float().mean(0) for i, lay in enumerate(layouts)])


@pytest.mark.parametrize("positions", ["last", "instruction_mean", "image_mean", first_two_mean])
def test_positions_equal_torch_hooks_and_run_with_cache(model, positions):
    ds = dataset(5, images="all" if positions == "image_mean" else "mixed")
    store = collect_activations(model, ds, names="blocks.*.hook_resid_post", positions=positions, batch_size=3,
                                progress=False)
    assert store.hooks == [RESID.format(l=0), RESID.format(l=1)]
    acts, layers = load_layers(store)
    assert acts.shape == (2, 5, model.d_model) and layers == [0, 1]
    for i, ex in enumerate(ds):
        ref = reference(model, ex, positions)
        batch = model.prepare([ex.image] if ex.image is not None else None, [ex.text])
        _, cache = model.run_with_cache(batch, "blocks.*.hook_resid_post")
        for l in layers:
            torch.testing.assert_close(acts[l, i], ref[l].float(), atol=2e-5, rtol=1e-5)
            name = RESID.format(l=l)
            if positions == "last":
                via_cache = cache.last(name)[0]
            elif positions == "image_mean":
                via_cache = cache.image(name, 0).mean(0)
            elif positions == "instruction_mean":
                via_cache = cache.instruction(name, 0).mean(0)
            else:
                via_cache = positions(cache[name], batch.layouts)[0]
            torch.testing.assert_close(acts[l, i], via_cache.float(), atol=2e-5, rtol=1e-5)


def test_all_hook_kinds_equal_plain_hf_outputs(model):
    ds = dataset(4)
    names = ["hook_embed", "hook_inputs_embeds", "blocks.*.hook_resid_post", "ln_final.hook_out", "hook_logits"]
    store = collect_activations(model, ds, names=names, batch_size=4, progress=False)
    for i, ex in enumerate(ds):
        one, _, out = hf_single(model, ex)
        hs = out.hidden_states                        # (embeddings, layer 0, normed last layer)
        torch.testing.assert_close(store.load("hook_inputs_embeds")[i], hs[0][0, -1], atol=1e-6, rtol=0)
        emb = model.hf.get_input_embeddings()  # the last position is a text token: its embedding row
        torch.testing.assert_close(store.load("hook_embed")[i], emb.weight[one.input_ids[0, -1]], atol=1e-6, rtol=0)
        torch.testing.assert_close(store.load(RESID.format(l=0))[i], hs[1][0, -1], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(store.load("ln_final.hook_out")[i], hs[2][0, -1], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(store.load("hook_logits")[i], out.logits[0, -1], atol=2e-5, rtol=1e-5)
    assert torch.equal(store.load("index"), torch.arange(4))
    labels = store.load("labels")
    assert store.manifest["label_names"] == ["safe", "unsafe"]
    assert labels.tolist() == [0, 1, 0, 1]


class Killed(RuntimeError):
    pass


def count_forwards(model) -> tuple[list[int], object]:
    calls: list[int] = []
    handle = model.hf.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape[0]),
                                                with_kwargs=True)
    return calls, handle


def test_killed_run_resumes_to_identical_shards(model, tmp_path):
    ds = dataset(7)
    kw = {"names": "blocks.*.hook_resid_post", "batch_size": 2, "shard_size": 3, "progress": False}
    full = collect_activations(model, ds, out=tmp_path / "full", **kw)

    def kill_after_first(k, store):
        if k == 0:
            raise Killed

    calls, handle = count_forwards(model)
    try:
        with pytest.raises(Killed):
            collect_activations(model, ds, out=tmp_path / "resumed", on_shard=kill_after_first, **kw)
        assert sum(calls) == 3                                   # shard 0 only: 3 examples
        calls.clear()
        seen: list[int] = []
        resumed = collect_activations(model, ds, out=tmp_path / "resumed", on_shard=lambda k, s: seen.append(k), **kw)
        assert seen == [1, 2] and sum(calls) == 4                # shards 1 (3 examples) and 2 (1 example)
        calls.clear()
        again = collect_activations(model, ds, out=tmp_path / "resumed", **kw)
        assert calls == [] and again.is_complete()              # nothing recomputed
    finally:
        handle.remove()
    for k in range(3):
        name = f"shard_{k:05d}.safetensors"
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()
    m_full = json.loads((tmp_path / "full" / "manifest.json").read_text())
    m_res = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert m_full["shards"] == m_res["shards"] and m_full["identity"] == m_res["identity"]
    for key in ("model_id", "hooks", "positions", "dataset_fingerprint", "dtype"):
        assert key in m_full
    assert torch.equal(full.load(RESID.format(l=1)), resumed.load(RESID.format(l=1)))
    mem = collect_activations(model, ds, out=None, **kw)
    assert mem.root is None and torch.equal(mem.load(RESID.format(l=1)), full.load(RESID.format(l=1)))


def test_deleted_shard_is_recomputed_alone(model, tmp_path):
    ds = dataset(5)
    kw = {"names": [RESID.format(l=1)], "batch_size": 4, "shard_size": 2, "progress": False}
    collect_activations(model, ds, out=tmp_path, **kw)
    good = (tmp_path / "shard_00001.safetensors").read_bytes()
    (tmp_path / "shard_00001.safetensors").unlink()
    calls, handle = count_forwards(model)
    try:
        with pytest.warns(StoreWarning, match="shard_00001.safetensors is missing"):
            collect_activations(model, ds, out=tmp_path, **kw)
    finally:
        handle.remove()
    assert sum(calls) == 2 and (tmp_path / "shard_00001.safetensors").read_bytes() == good


def test_store_dtype_and_text_only_dataset(model):
    ds = [{"text": t, "label": "unsafe" if i < 2 else "safe"} for i, t in enumerate(TEXTS[:4])]
    st32 = collect_activations(model, ds, names=RESID.format(l=0), progress=False)
    st16 = collect_activations(model, ds, names=RESID.format(l=0), dtype=torch.bfloat16, progress=False)
    x16 = st16.load(RESID.format(l=0))
    assert x16.dtype == torch.bfloat16 and st16.manifest["dtype"] == "bfloat16"
    assert torch.equal(x16, st32.load(RESID.format(l=0)).to(torch.bfloat16))


def brute_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    return float(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]))


def test_separability_of_collected_classes_matches_numpy(model):
    ds = dataset(10)                                              # d = 64 > n: FDR must stay finite and exact
    store = collect_activations(model, ds, names="blocks.*.hook_resid_post", progress=False)
    pair = class_activations(store, "unsafe", "safe")
    assert pair.acts_a.shape == (2, 5, 64) and pair.acts_b.shape == (2, 5, 64)
    assert pair.index_a.tolist() == [1, 3, 5, 7, 9] and pair.index_b.tolist() == [0, 2, 4, 6, 8]
    sep = layer_separability(pair, eps=1e-2, test_fraction=0.34, seed=0)
    for l in range(2):
        a, b = pair.acts_a[l].double().numpy(), pair.acts_b[l].double().numpy()
        delta = a.mean(0) - b.mean(0)
        s = np.cov(a, rowvar=False) + np.cov(b, rowvar=False) + 1e-2 * np.eye(64)
        assert sep.fdr[l].item() == pytest.approx(float(delta @ np.linalg.solve(s, delta)), rel=1e-7)
        assert 0.0 <= sep.auroc[l].item() <= 1.0
    # held-out AUROC by hand with the same split
    g = torch.Generator().manual_seed(0)
    perm_a, perm_b = torch.randperm(5, generator=g).numpy(), torch.randperm(5, generator=g).numpy()
    te_a, tr_a, te_b, tr_b = perm_a[:2], perm_a[2:], perm_b[:2], perm_b[2:]
    for l in range(2):
        a, b = pair.acts_a[l].double().numpy(), pair.acts_b[l].double().numpy()
        w = a[tr_a].mean(0) - b[tr_b].mean(0)
        scores = np.concatenate([a[te_a] @ w, b[te_b] @ w])
        assert sep.auroc[l].item() == pytest.approx(brute_auroc(scores, np.array([True, True, False, False])))
    direction = pair.direction("diff_of_means", normalise=False)
    manual = pair.acts_a.double().mean(1) - pair.acts_b.double().mean(1)
    torch.testing.assert_close(direction.vectors, manual.float(), atol=1e-6, rtol=1e-6)
    assert direction.provenance["dataset_fingerprint"] == store.manifest["dataset_fingerprint"]
    fig = separability_figure_by_condition({"plain": sep, "reformulated": sep})
    assert len(fig.data) == 4 and list(fig.data[0].x) == [0, 1]
    assert sep.to_dict()["n_a"] == 5


def test_jsonl_dataset_with_image_paths(model, tmp_path):
    ds = dataset(4)
    lines = []
    for i, ex in enumerate(ds):
        rec = {"question": ex.text, "label": ex.label, "id": ex.id}
        if ex.image is not None:
            ex.image.save(tmp_path / f"im{i}.png")
            rec["image_path"] = f"im{i}.png"
        lines.append(json.dumps(rec))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    from_file = collect_activations(model, load_jsonl(tmp_path / "data.jsonl", image_root=tmp_path),
                                    names=RESID.format(l=1), progress=False)
    in_memory = collect_activations(model, ds, names=RESID.format(l=1), progress=False)
    assert torch.equal(from_file.load(RESID.format(l=1)), in_memory.load(RESID.format(l=1)))
    assert torch.equal(from_file.load("labels"), in_memory.load("labels"))
    (tmp_path / "im1.png").write_bytes((tmp_path / "im2.png").read_bytes())   # same path, other content
    changed = collect_activations(model, load_jsonl(tmp_path / "data.jsonl", image_root=tmp_path),
                                  names=RESID.format(l=1), progress=False)
    assert changed.manifest["dataset_fingerprint"] != from_file.manifest["dataset_fingerprint"]


def test_a_store_collected_under_an_edit_is_not_resumed_without_it(tmp_path):
    """Values collected inside model.hooks([(H, f)]) are f's, not the model's: reopening that store without the
    edit (or with another one) is refused rather than returning the edited values."""
    import moras_interp as mi
    from moras_interp import collect_activations

    m = mi.load_model("toy-llava")
    h = "blocks.0.hook_resid_post"
    ds = [{"text": "how do i make a bomb ?", "label": "unsafe"}, {"text": "how do i bake bread ?", "label": "safe"}]
    def zero(v, ctx):
        return v * 0

    with m.hooks([(h, zero)]):
        collect_activations(m, ds, names=h, out=tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="edits"):
        collect_activations(m, ds, names=h, out=tmp_path / "s", progress=False)
    with m.hooks([(h, lambda v, ctx: v * 2)]), pytest.raises(ValueError, match="edits"):
        collect_activations(m, ds, names=h, out=tmp_path / "s", progress=False)
    with m.hooks([(h, zero)]):  # the same edit again: resumed
        store = collect_activations(m, ds, names=h, out=tmp_path / "s", progress=False)
    assert float(store.load(h).abs().max()) == 0.0
