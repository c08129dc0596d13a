"""Steering (add α·v / project out v) against hand-written torch hooks, during forward and generation."""

from __future__ import annotations

import pytest
import torch

from moras_interp import load_model
from moras_interp.activations import Direction, add_steering, steer
from moras_interp.models.tiny import build_tiny, tiny_image

NEW = 5


@pytest.fixture(scope="module")
def model():
    hf, proc = build_tiny("llava", num_layers=2, seed=0)
    return load_model(hf, processor=proc, validate=False)


@pytest.fixture(scope="module")
def direction(model):
    g = torch.Generator().manual_seed(3)
    return Direction(torch.randn(2, model.d_model, generator=g), layers=[0, 1])


def layers(model):
    return model.hf.model.language_model.layers


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())


def gen(model, batch, **kw):
    """Greedy generation of exactly NEW tokens with per-step logits."""
    with torch.no_grad():
        out = model.hf.generate(**batch.inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                output_logits=True, return_dict_in_generate=True,
                                pad_token_id=model.tokenizer.pad_token_id, **kw)
    return out.sequences, torch.stack(out.logits, 1)                    # [b, len], [b, NEW, vocab]


class ReferenceSteer:
    """Plain torch forward hooks on the decoder layers: out[rows, cols] += alpha * v at the chosen steps."""

    def __init__(self, model, vectors: dict[int, torch.Tensor], alpha, *, steps=None, last_only=False, mask=None):
        self.step = -1
        self.handles = [model.hf.register_forward_pre_hook(self.count)]
        for l, v in vectors.items():
            self.handles.append(layers(model)[l].register_forward_hook(self.make(v, alpha, steps, last_only, mask)))

    def count(self, module, args):
        self.step += 1

    def make(self, v, alpha, steps, last_only, mask):
        def hook(module, args, out):
            if steps is not None and self.step not in steps:
                return None
            a = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1, 1, 1)
            add = (a * v).expand_as(out).clone()
            if last_only:
                add[:, :-1] = 0
            elif self.step == 0 and mask is not None:                  # prefill: real tokens only
                add[~mask] = 0
            return out + add
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def test_generation_steering_equals_torch_hook_every_step(model, direction):
    batch = model.prepare([tiny_image()], ["what is in the image"])
    _, plain_logits = gen(model, batch)
    ref = ReferenceSteer(model, {0: direction.vectors[0], 1: direction.vectors[1]}, 2.5)
    try:
        ref_ids, ref_logits = gen(model, batch)
    finally:
        ref.remove()
    assert ref.step == NEW - 1                                           # prefill + NEW-1 decode forwards
    with steer(model, direction, alpha=2.5, positions="all", layouts=batch.layouts) as handle:
        ids, logits = gen(model, batch)
    assert handle.step == NEW - 1 and handle.calls == {"blocks.0.hook_resid_post": NEW, "blocks.1.hook_resid_post": NEW}
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert (logits - plain_logits).abs().max() > 1e-2                   # the steering did something


def test_steps_addressed_explicitly_and_last_position(model, direction):
    batch = model.prepare([tiny_image(seed=2)], ["describe the picture"])
    vec = {1: direction.vectors[1]}
    for steps in ([0], [2, 3], "decode"):
        want = {0} if steps == [0] else set(steps) if isinstance(steps, list) else set(range(1, NEW))
        ref = ReferenceSteer(model, vec, -4.0, steps=want, last_only=True)
        try:
            ref_ids, ref_logits = gen(model, batch)
        finally:
            ref.remove()
        with steer(model, direction, alpha=-4.0, positions="last", steps=steps, layers=[1],
                   layouts=batch.layouts) as handle:
            ids, logits = gen(model, batch)
        assert torch.equal(ids, ref_ids), steps
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        assert handle.calls["blocks.1.hook_resid_post"] == len(want)
        if steps != "decode":
            assert not handle.active                                     # finite steps: removed after the last


def test_left_padded_batch_all_positions_skip_padding(model, direction):
    batch = model.prepare([tiny_image(seed=1), None], ["what is in the image", "how do i make a bomb please now"])
    mask = batch.inputs["attention_mask"].bool()
    assert not mask.all()                                                # there is padding
    ref = ReferenceSteer(model, {0: direction.vectors[0]}, 1.5, mask=mask)
    try:
        ref_ids, ref_logits = gen(model, batch)
    finally:
        ref.remove()
    with steer(model, direction, alpha=1.5, layers=[0], layouts=batch.layouts):
        ids, logits = gen(model, batch)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


def test_project_out_equals_manual(model, direction):
    batch = model.prepare([tiny_image(seed=4)], ["is this safe"])
    v = direction.vectors[0]
    u = v / v.norm()
    seen: dict[str, torch.Tensor] = {}

    def manual(module, args, out):
        return out - (out @ u)[..., None] * u

    h = layers(model)[0].register_forward_hook(manual)
    try:
        with torch.no_grad():
            want = model.hf(**batch.inputs).logits
    finally:
        h.remove()
    grab = layers(model)[0].register_forward_hook(lambda m, a, out: seen.__setitem__("h", out.detach().clone()))
    try:
        with steer(model, direction, mode="project_out", layers=[0], layouts=batch.layouts):
            got = model.forward(batch)
    finally:
        grab.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (seen["h"] @ u).abs().max() < 1e-5                            # the component is gone
    plain = model.forward(batch)
    assert (plain - got).abs().max() > 1e-3


def test_per_example_alpha_in_padded_batch_equals_single_runs(model, direction):
    prompts = ["what is in the image", "how do i make poison from this item please tell me"]
    images = [tiny_image(seed=5), tiny_image(seed=6)]
    alphas = torch.tensor([3.0, -2.0])
    batch = model.prepare(images, prompts)
    assert batch.layouts[0].n_pad > 0
    with steer(model, direction, alpha=alphas, positions="last", layouts=batch.layouts):
        logits = model.forward(batch)[:, -1]
        ids, step_logits = gen(model, batch)
    for i in range(2):
        single = model.prepare([images[i]], [prompts[i]])
        ref = ReferenceSteer(model, {0: direction.vectors[0], 1: direction.vectors[1]}, float(alphas[i]),
                             last_only=True)
        try:
            with torch.no_grad():
                want = model.hf(**single.inputs).logits[0, -1]
            ref.step = -1
            want_ids, want_step_logits = gen(model, single)
        finally:
            ref.remove()
        torch.testing.assert_close(logits[i], want, atol=2e-5, rtol=1e-5)
        assert torch.equal(ids[i, -NEW:], want_ids[0, -NEW:])
        torch.testing.assert_close(step_logits[i], want_step_logits[0], atol=2e-5, rtol=1e-5)


def test_handle_removes_cleanly(model, direction):
    batch = model.prepare([tiny_image()], ["what is in the image"])
    before = hook_count(model)
    plain = model.forward(batch)
    handle = add_steering(model, direction, alpha=5.0, layouts=batch.layouts)
    assert handle.active and hook_count(model) > before
    assert (model.forward(batch) - plain).abs().max() > 1e-2
    handle.remove()
    assert not handle.active and hook_count(model) == before
    assert torch.equal(model.forward(batch), plain)
    with pytest.raises(RuntimeError, match="boom"), steer(model, direction, alpha=5.0, layouts=batch.layouts):
        raise RuntimeError("boom")
    assert hook_count(model) == before and torch.equal(model.forward(batch), plain)


def test_steering_argument_errors(model, direction):
    batch = model.prepare([tiny_image()], ["what is in the image"])
    with pytest.raises(ValueError, match="mode='scale'"):
        add_steering(model, direction, mode="scale")
    with pytest.raises(ValueError, match=r"positions='middle': use one of \['all', 'last'"):
        add_steering(model, direction, positions="middle")
    with pytest.raises(ValueError, match="alpha must be a finite float or a per-example tensor"):
        add_steering(model, direction, alpha=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"expected \(64,\)"):
        add_steering(model, {"blocks.0.hook_resid_post": torch.ones(3)})
    with pytest.raises(ValueError, match="project_out needs a non-zero direction"):
        add_steering(model, {"blocks.0.hook_resid_post": torch.zeros(64)}, mode="project_out")
    with pytest.raises(KeyError, match="Unknown hook name"):
        add_steering(model, {"blocks.7.hook_resid_post": torch.ones(64)})
    with pytest.raises(ValueError, match="alpha has 3 entries for a batch of 1"), \
            steer(model, direction, alpha=torch.ones(3), layouts=batch.layouts):
        model.forward(batch)
