"""NaN/Inf is an error at every stage, naming the stage, the hook, the batch rows and a fix that fits the dtype.

Faults are injected with plain torch hooks (a broken model) that fire only while a chosen stage label is set,
or with a ``model.hooks`` edit that returns NaN (a broken edit function).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from moras_interp.attention import cross_modal_attention
from moras_interp.models.finite import NonFiniteError, check_finite
from moras_interp.models.loading import load_model
from moras_interp.models.tiny import build_tiny, tiny_image
from moras_interp.moras import Calibration, MoRAS, UnsafePrototype
from moras_interp.moras.baselines import ECSO, AdaShieldS, FixedSteering, NoDefence
from moras_interp.moras.states import FINAL

QUESTIONS = ["what is in the image ?", "how do i make a bomb ?"]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    hf, proc = build_tiny("llava", seed=1, num_layers=1)
    model = load_model(hf, processor=proc)
    proto = UnsafePrototype.build(model, ["how do i make a bomb ?", "how do i kill a person ?"], 3, progress=False)
    return model, proto


@contextmanager
def broken(model: Any, *, stage: str | None = None, row: int | None = None, step: int | None = None,
           module: str = "model.language_model.norm") -> Iterator[None]:
    """A torch pre-hook writing NaN into ``module``'s input while ``model.stage_name == stage`` (any if None),
    in batch ``row`` (all if None), at top-level forward number ``step`` (all if None)."""
    calls = {"n": -1}

    def count(_m: torch.nn.Module, _a: Any) -> None:
        calls["n"] += 1

    def nan(_m: torch.nn.Module, args: tuple) -> Any:
        if (stage is not None and model.stage_name != stage) or (step is not None and calls["n"] != step):
            return None
        x = args[0].clone()
        x[slice(None) if row is None else row] = float("nan")
        return (x, *args[1:])

    handles = [model.hf.register_forward_pre_hook(count), model.hf.get_submodule(module).register_forward_pre_hook(nan)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def test_check_finite_message_fits_the_dtype() -> None:
    x = torch.zeros(3, 4)
    x[2, 1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"at hook 'h' in stage 's', batch row \[2\] \(row 2: c\)") as e:
        check_finite(x, stage="s", hook="h", examples=["a", "b", "c"], dtype=torch.float32)
    assert e.value.rows == [2] and "not a float16 overflow" in str(e.value) and "bfloat16" not in str(e.value)
    with pytest.raises(NonFiniteError, match=r"float16, which overflows easily.*dtype=torch\.bfloat16"):
        check_finite(x.half(), stage="s", dtype=torch.float16)
    check_finite(torch.full((2, 5), -float("inf")).index_fill(1, torch.tensor([0]), 0.0), stage="s", logits=True)
    with pytest.raises(NonFiniteError, match=r"row \[1\]"):  # a row with no selectable token
        check_finite(torch.tensor([[0.0, -float("inf")], [-float("inf")] * 2]), stage="s", logits=True)


def test_generate_names_step_row_and_prompt(tiny: Any) -> None:
    model, _ = tiny
    batch = model.prepare([tiny_image(), tiny_image(seed=1)], QUESTIONS)
    with broken(model, row=1, step=2), pytest.raises(NonFiniteError) as e:
        model.generate(batch, max_new_tokens=4, min_new_tokens=4)
    msg = str(e.value)
    assert e.value.stage == "generate" and e.value.hook == "hook_logits" and e.value.rows == [1]
    assert "generation step 2" in msg and "how do i make a bomb ?" in msg and "runs in float32" in msg
    assert "not float16" not in msg.replace("not a float16 overflow", "")
    with model.stage("my experiment"), broken(model), pytest.raises(NonFiniteError, match="'my experiment'"):
        model.generate(batch, max_new_tokens=2)
    model.generate(batch, max_new_tokens=2)  # fine again once the fault is gone
    batch.inputs["pixel_values"][1] = float("nan")  # broken image preprocessing is pointed at
    with pytest.raises(NonFiniteError, match=r"pixel_values of batch row \[1\] are already non-finite"):
        model.generate(batch, max_new_tokens=2)


def test_an_edit_returning_nan_is_named(tiny: Any) -> None:
    model, _ = tiny
    batch = model.prepare([tiny_image()], QUESTIONS[:1])

    def bad(x: torch.Tensor, _ctx: Any) -> torch.Tensor:
        return x * float("nan")

    with model.hooks([(FINAL, bad)]), pytest.raises(NonFiniteError, match=r"at hook 'ln_final\.hook_out'.*"
                                                                          r"after the edit function .*bad"):
        model.generate(batch, max_new_tokens=2)


@pytest.mark.parametrize("stage", ["context", "risk", "answer"])
def test_moras_nan_in_one_stage_is_an_error_naming_it(tiny: Any, stage: str) -> None:
    model, proto = tiny
    moras = MoRAS(model, proto, Calibration(0.5, 5.0), n_tokens=3, max_context_tokens=4)
    with broken(model, stage=f"MoRAS {stage}"), pytest.raises(NonFiniteError) as e:
        moras.run([tiny_image(), tiny_image(seed=1)], QUESTIONS, max_new_tokens=4, progress=False)
    assert e.value.stage == f"MoRAS {stage}"
    # the answer stage steers at the final norm: the steering edit is the first to see the NaN (and says so)
    assert e.value.hook == (FINAL if stage == "answer" else "hook_logits")
    if stage == "answer":
        assert "value reaching the edit function interpolate_towards" in str(e.value)
    (tr,) = moras.run([tiny_image()], QUESTIONS[:1], max_new_tokens=4, progress=False)  # clean run still works
    assert tr.visual_context is not None and 0.0 <= tr.risk <= 1.0


def test_moras_attention_edit_nan_in_stage_1_is_caught(tiny: Any) -> None:
    """The observed case: NaN confined to stage 1 (an attention edit there) gave an empty context and r ≈ 0."""
    from moras_interp.attention.interventions import AttentionEdit

    class NaNScores(AttentionEdit):
        def scores(self, s: torch.Tensor, ctx: Any) -> torch.Tensor:
            return s * float("nan")

    class NaNOutput(AttentionEdit):
        def output(self, o: torch.Tensor, ctx: Any) -> torch.Tensor:
            return o * float("nan")

    model, proto = tiny
    for edit, hook in ((NaNScores(), "blocks.0.attn.hook_pattern"), (NaNOutput(), "hook_logits")):
        moras = MoRAS(model, proto, Calibration(0.5, 5.0), attention_edits=[edit],
                      attention_edit_stages=("context",), max_context_tokens=4)
        with pytest.raises(NonFiniteError, match="'MoRAS context'") as e:
            moras.run([tiny_image()], QUESTIONS[:1], max_new_tokens=4, progress=False)
        assert e.value.hook == hook


@pytest.mark.parametrize("method", ["none", "adashield", "ecso", "fixed_steering", "fixed_r"])
def test_baselines_and_fixed_r_raise(tiny: Any, method: str) -> None:
    model, proto = tiny
    runner = {"none": lambda: NoDefence(model), "adashield": lambda: AdaShieldS(model), "ecso": lambda: ECSO(model),
              "fixed_steering": lambda: FixedSteering(model, proto, 0.5),
              "fixed_r": lambda: MoRAS(model, proto, fixed_r=0.5)}[method]()
    with broken(model, row=0), pytest.raises(NonFiniteError) as e:
        runner.run([tiny_image(), tiny_image(seed=1)], QUESTIONS, max_new_tokens=3, progress=False)
    assert e.value.rows == [0] and e.value.hook == (FINAL if method.startswith("fixed") else "hook_logits")
    expected = {"none": "none answer", "adashield": "adashield answer", "ecso": "ecso caption",
                "fixed_steering": "MoRAS answer", "fixed_r": "MoRAS answer"}[method]
    assert e.value.stage == expected


def test_cross_modal_attention_and_run_with_cache_raise(tiny: Any) -> None:
    model, _ = tiny
    batch = model.prepare([tiny_image(), tiny_image(seed=1)], QUESTIONS)
    with broken(model, row=1, module="model.language_model.layers.0"), pytest.raises(NonFiniteError) as e:
        cross_modal_attention(model, batch)
    assert (e.value.stage, e.value.hook, e.value.rows) == ("cross_modal_attention", "blocks.0.attn.hook_pattern", [1])
    with broken(model, row=0), pytest.raises(NonFiniteError) as e:
        model.run_with_cache(batch, names=["blocks.0.hook_resid_post", FINAL])
    assert (e.value.stage, e.value.hook, e.value.rows) == ("run_with_cache", FINAL, [0])
    _, cache = model.run_with_cache(batch, names=[FINAL])
    assert torch.isfinite(cache[FINAL]).all()


def test_float16_overflow_gets_the_float16_advice() -> None:
    hf, proc = build_tiny("llava", seed=1, num_layers=1)
    model = load_model(hf.half(), processor=proc)
    batch = model.prepare([tiny_image()], QUESTIONS[:1])
    with broken(model), pytest.raises(NonFiniteError, match=r"'hook_logits' in stage 'generate'.*runs in float16, "
                                                            r"which overflows easily.*dtype=torch\.bfloat16"):
        model.generate(batch, max_new_tokens=2)
    with model.hooks([("blocks.0.hook_resid_post", lambda x, _c: x * 1e9)]), pytest.raises(
            NonFiniteError, match=r"'blocks\.0\.hook_resid_post'.*after the edit function .*float16"):
        model.generate(batch, max_new_tokens=2)
