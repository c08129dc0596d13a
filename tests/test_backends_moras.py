"""MoRAS on both backends on the organism: equal traces; user reads/edits inside a run (``MoRAS.trace``) act
exactly as the same ``model.hooks`` edit around the same generation."""

from __future__ import annotations

import pytest
import torch

from moras_interp.models.loading import load_model
from moras_interp.moras import MoRAS, UnsafePrototype
from moras_interp.moras.risk import Calibration
from moras_interp.moras.steering import interpolate_towards
from moras_interp.moras.trace import MoRASTrace
from moras_interp.organisms import toy_examples, toy_harmful_requests_path

NEW = 8
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup():
    model = load_model("toy-llava")
    ex = toy_examples(2, 2, seed=0, split="eval")
    lines = [x.strip() for x in toy_harmful_requests_path().read_text().splitlines() if x.strip() and x[0] != "#"]
    prompts = lines[:3]
    proto = UnsafePrototype.build(model, prompts, 3, progress=False)
    with model.using("nnsight"):
        proto_n = UnsafePrototype.build(model, prompts, 3, progress=False)
    return model, proto, proto_n, [e.image for e in ex], [e.text for e in ex]


def _same(a: MoRASTrace, b: MoRASTrace) -> None:
    assert (a.answer, a.visual_context, a.stage2_tokens, a.stage2_steps) == \
        (b.answer, b.visual_context, b.stage2_tokens, b.stage2_steps)
    assert a.similarity == pytest.approx(b.similarity, abs=1e-5) and a.risk == pytest.approx(b.risk, abs=1e-5)
    assert a.displacement_norms == pytest.approx(b.displacement_norms, abs=1e-4)
    torch.testing.assert_close(a.stage2_states, b.stage2_states, rtol=1e-5, atol=1e-5)


def test_moras_traces_equal_across_backends(setup):
    model, proto, proto_n, images, questions = setup
    for k in proto.states:
        torch.testing.assert_close(proto_n.states[k], proto.states[k], rtol=1e-5, atol=1e-5)
    cal = Calibration(0.3, 12.0)
    hooks = MoRAS(model, proto, cal, backend="hooks").run(images, questions, max_new_tokens=NEW, progress=False)
    nn = MoRAS(model, proto, cal, backend="nnsight").run(images, questions, max_new_tokens=NEW, progress=False)
    for a, b in zip(hooks, nn):
        _same(a, b)
    assert len({round(t.risk, 3) for t in nn}) > 1  # per-example strengths differ within the batch
    assert any(n > 0 for t in nn for n in t.displacement_norms)
    assert nn[0].config["backend"] == "nnsight"


def _push(v: torch.Tensor, ctx) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return v + 6.0 * torch.randn(v.shape[-1], generator=g)


@pytest.mark.parametrize("backend", ["hooks", "nnsight"])
def test_user_edit_inside_moras_equals_model_hooks(setup, backend):
    model, proto, _, images, questions = setup
    cal = Calibration(0.3, 12.0)
    moras = MoRAS(model, proto, cal)
    with moras.trace(images, questions, backend=backend, max_new_tokens=NEW, progress=False) as run:
        run.stage("answer").write(HOOK, _push, steps="all").read(HOOK, steps=[0, 2])
        run.stage("risk").read("ln_final.hook_out", steps="prefill")  # MoRAS's stage-2 state
    traces = run.traces
    plain = moras.run(images, questions, max_new_tokens=NEW, progress=False)
    assert [t.answer for t in traces] != [t.answer for t in plain]  # the user's edit changed answers
    assert [t.risk for t in traces] == pytest.approx([t.risk for t in plain], abs=1e-6)  # only stage 3 edited

    # reference: the same edit through model.hooks, around MoRAS's own steering, on the plain hooks backend
    batch = model.prepare(images, questions)
    seen: list = []
    r = torch.tensor([t.risk for t in traces])
    with interpolate_towards(model, moras.targets, r), \
            model.hooks([(HOOK, _push)], steps="all", layouts=batch.layouts), \
            model.hooks([(HOOK, lambda v, c: seen.append((c.step, v.clone())))], steps=[0, 2], read=True):
        ref = model.generate(batch, NEW, backend="hooks")
    assert [t.answer for t in traces] == ref.texts
    for step, value in seen:
        for i, (t, lay) in enumerate(zip(traces, batch.layouts)):
            want = value[i, lay.n_pad:] if step == 0 else value[i]
            torch.testing.assert_close(t.reads[f"answer/{HOOK}/{step}"], want)
    assert {k.split("/")[0] for k in traces[0].reads} == {"answer", "risk"}
    for t in traces:  # the prefill's last position after the final norm is the state stage 2 scores
        torch.testing.assert_close(t.reads["risk/ln_final.hook_out/0"][-1].float(), t.stage2_states[0].float(),
                                   rtol=1e-5, atol=1e-5)


def test_reads_round_trip_through_trace_files(setup, tmp_path):
    model, proto, _, images, questions = setup
    moras = MoRAS(model, proto, fixed_r=0.5)
    with moras.trace(images[:1], questions[:1], backend="nnsight", max_new_tokens=2, progress=False) as run:
        run.stage("answer").read(HOOK, steps="decode")
    t = run.traces[0]
    assert list(t.reads) == [f"answer/{HOOK}/1"]
    back = MoRASTrace.load(t.save(tmp_path / "t"))
    torch.testing.assert_close(back.reads[f"answer/{HOOK}/1"], t.reads[f"answer/{HOOK}/1"])


def test_trace_errors(setup):
    model, proto, _, images, questions = setup
    moras = MoRAS(model, proto, fixed_r=0.5)
    run = moras.trace(images, questions)
    with pytest.raises(ValueError, match="stage 'anwser'"):
        run.stage("anwser")
    with pytest.raises(KeyError, match="Did you mean"):
        run.stage("answer").read("blocks.1.hook_resid_pots")
    with pytest.raises(ValueError, match="backend="):
        moras.trace(images, questions, backend="torch")
