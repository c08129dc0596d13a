"""Remote readiness of the nnsight backend: every graph it builds (MoRAS stages 1–3, the prototype, collection,
steering) survives nnsight's remote serialisation. ``remote="local"`` serialises the request exactly as for NDIF,
deserialises it with this package's modules hidden (as on a server that lacks them) and runs it in-process; the
results must equal the local hooks backend."""

from __future__ import annotations

import pytest
import torch

from moras_interp.activations import collect_activations, steer
from moras_interp.models import derived_hooks
from moras_interp.models.loading import load_model
from moras_interp.models.tiny import build_tiny, tiny_image
from moras_interp.moras import MoRAS, UnsafePrototype
from moras_interp.moras.risk import Calibration
from moras_interp.organisms import toy_examples, toy_harmful_requests_path


@pytest.fixture(scope="module")
def organism():
    return load_model("toy-llava")


def _remote(model, flag):
    model.remote, model.backend = flag, ("nnsight" if flag else "hooks")


def test_moras_stages_1_to_3_and_prototype_serialise(organism):
    model = organism
    ex = toy_examples(2, 1, seed=1, split="eval")
    images, questions = [e.image for e in ex], [e.text for e in ex]
    lines = [x.strip() for x in toy_harmful_requests_path().read_text().splitlines() if x.strip() and x[0] != "#"]
    cal = Calibration(0.3, 12.0)
    proto = UnsafePrototype.build(model, lines[:2], 3, progress=False)
    local = MoRAS(model, proto, cal).run(images, questions, max_new_tokens=6, progress=False)
    _remote(model, "local")
    try:
        proto_r = UnsafePrototype.build(model, lines[:2], 3, progress=False)
        remote = MoRAS(model, proto_r, cal).run(images, questions, max_new_tokens=6, progress=False)
        with pytest.raises(ValueError, match="only backend='nnsight'"):
            model.generate(model.prepare(images[:1], questions[:1]), 1, backend="hooks")
    finally:
        _remote(model, False)
    torch.testing.assert_close(proto_r.final, proto.final, rtol=1e-5, atol=1e-5)
    for a, b in zip(local, remote):
        assert (a.answer, a.visual_context, a.stage2_tokens) == (b.answer, b.visual_context, b.stage2_tokens)
        assert a.risk == pytest.approx(b.risk, abs=1e-5)
        # side results recorded inside edit functions (ctx.record) come back from the serialised run
        assert b.displacement_norms == pytest.approx(a.displacement_norms, abs=1e-4) and b.displacement_norms


def test_collection_and_steering_serialise():
    hf, proc = build_tiny("llava")
    model = load_model(hf, processor=proc, validate=False)
    examples = [(tiny_image(60, 40, seed=i), "what is in the image", "safe") for i in range(3)]
    ref = collect_activations(model, examples, names="blocks.*.hook_resid_post", batch_size=2, progress=False)
    batch = model.prepare([tiny_image(), tiny_image(50, 50, seed=3)], ["what is in the image", "describe it"])
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    with steer(model, {"blocks.1.hook_resid_post": v}, alpha=torch.tensor([2.0, -1.0]), positions="last",
               steps=[0, 2], layouts=batch.layouts):
        g_ref = model.generate(batch, 4, min_new_tokens=4, return_logits=True)
    _remote(model, "local")
    try:
        got = collect_activations(model, examples, names="blocks.*.hook_resid_post", batch_size=2, progress=False)
        with steer(model, {"blocks.1.hook_resid_post": v}, alpha=torch.tensor([2.0, -1.0]), positions="last",
                   steps=[0, 2], layouts=batch.layouts):
            g = model.generate(batch, 4, min_new_tokens=4, return_logits=True)
    finally:
        _remote(model, False)
    for h in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"):
        torch.testing.assert_close(got.load(h), ref.load(h), rtol=1e-5, atol=1e-5)
    assert torch.equal(g.new_tokens, g_ref.new_tokens)
    torch.testing.assert_close(g.logits, g_ref.logits, rtol=1e-5, atol=1e-5)


def test_derived_hooks_serialise():
    """Per-head, norm and hook_result edits and reads (computed in the graph from the module's weights) through the
    remote round trip, against the local hooks backend."""
    hf, proc = build_tiny("gemma3")
    model = load_model(hf, processor=proc, validate=False)
    batch = model.prepare([tiny_image(), tiny_image(50, 50, seed=3)], ["what is in the image", "describe it"])
    reads = ["blocks.0.ln1.hook_scale", "blocks.1.attn.hook_result", "blocks.1.hook_resid_mid", "ln_final.hook_normalized"]

    def run() -> tuple:
        got: dict = {}

        def keep(name):
            return lambda v, c: got.setdefault((name, c.step), v.clone())

        def zero_head(v, c):
            out = v.clone()
            out[..., 1, :] = 0
            return out

        with model.hooks([("blocks.0.ln1.hook_normalized", lambda v, c: v * 0.7),
                          ("blocks.1.attn.hook_z", zero_head)], steps=[0, 1]), \
                model.hooks([(n, keep(n)) for n in reads], read=True):
            return model.generate(batch, 3, min_new_tokens=3, return_logits=True), got

    g_ref, r_ref = run()
    _remote(model, "local")
    try:
        g, r = run()
    finally:
        _remote(model, False)
    assert torch.equal(g.new_tokens, g_ref.new_tokens) and r.keys() == r_ref.keys() and len(r) == 3 * len(reads)
    torch.testing.assert_close(g.logits, g_ref.logits, rtol=1e-5, atol=1e-5)
    for k in r:
        torch.testing.assert_close(r[k], r_ref[k], rtol=1e-5, atol=1e-5)
    assert bool((r[("blocks.1.attn.hook_result", 0)][..., 1, :] == 0).all())  # the zeroed head adds nothing


@pytest.mark.parametrize("arch", ["qwen2_vl", "gemma3"])
def test_remote_true_builds_the_model_on_meta(tmp_path, monkeypatch, arch):
    """A saved tiny checkpoint loaded with remote=True: no weights allocated, same module tree, parameter shapes
    and hook points (the norms' conventions included, found without weights) as the real load; running it needs a
    Hub id NDIF hosts, a local path is a clear error before any network access."""
    hf, proc = build_tiny(arch)
    hf.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    monkeypatch.setattr(derived_hooks, "_KINDS", {})  # nothing learnt from a real module of the same class
    meta = load_model(tmp_path, remote=True)
    monkeypatch.setattr(derived_hooks, "_KINDS", {})
    real = load_model(tmp_path, validate=False)
    assert [meta.hook_point(n) for n in meta.hook_names()] == [real.hook_point(n) for n in real.hook_names()]
    params = dict(meta.hf.named_parameters())
    assert params and all(p.is_meta for p in params.values()) and meta.on_meta
    assert {n: p.shape for n, p in params.items()} == {n: p.shape for n, p in real.hf.named_parameters()}
    assert meta.hook_names() == real.hook_names() and meta.backend == "nnsight"
    assert meta.hook_point("blocks.1.hook_resid_post") == real.hook_point("blocks.1.hook_resid_post")
    batch = meta.prepare([tiny_image()], ["what is in the image"])
    assert batch.inputs["input_ids"].device.type == "cpu" and meta._inputs(batch)["input_ids"].device.type == "cpu"
    with pytest.raises(ValueError, match="Hugging Face Hub id"):
        meta.generate(batch, 1)
    with pytest.raises(ValueError, match="only backend='nnsight'"):
        meta.forward(batch, backend="hooks")
