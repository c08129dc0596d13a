"""Ablation grid runner: equals running each setting by hand, resumes after interruption, standard evaluators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import moras_interp as mi
from moras_interp.ablations import (
    attention_evaluator,
    metric_vs_factor,
    moras_evaluator,
    run_grid,
    two_factor_heatmap,
)
from moras_interp.moras.pipeline import MoRAS, MoRASConfig
from moras_interp.moras.prototype import UnsafePrototype
from moras_interp.moras.risk import Calibration
from moras_interp.organisms import tasks


@pytest.fixture(scope="module")
def toy() -> mi.MLLM:
    return mi.load_model("toy-llava")


@pytest.fixture(scope="module")
def proto(toy: mi.MLLM) -> UnsafePrototype:
    return UnsafePrototype.build(toy, tasks.toy_harmful_requests()[:20], 3, progress=False)


@pytest.fixture(scope="module")
def data() -> list[tasks.Query]:
    return tasks.harmful_image_queries(3, seed=5) + tasks.benign_image_queries(2, seed=5)


CAL = Calibration(0.5, 10.0)


def test_grid_equals_settings_run_one_by_one(toy: mi.MLLM, proto: UnsafePrototype, data: list[Any],
                                             tmp_path: Path) -> None:
    grid = {"fixed_r": [None, 1.0], "use_context": [True, False]}
    df = run_grid(grid, moras_evaluator(toy, proto, CAL, max_new_tokens=8, batch_size=3), data, out=tmp_path,
                  progress=False)
    assert len(df) == 4 * len(data)
    for fixed_r in grid["fixed_r"]:
        for use_context in grid["use_context"]:
            m = MoRAS(toy, proto, CAL, MoRASConfig(fixed_r=fixed_r, use_context=use_context))
            traces = m.run([q.image for q in data], [q.question for q in data], max_new_tokens=8, batch_size=1,
                           progress=False)
            sub = df[(df.fixed_r.isna() if fixed_r is None else df.fixed_r == fixed_r)
                     & (df.use_context == use_context)].sort_values("example")
            assert list(sub.answer) == [t.answer for t in traces]
            assert np.allclose(sub.risk.to_numpy(float), [t.risk for t in traces], atol=1e-5)
            assert list(sub.refused) == ["i am sorry" in t.answer for t in traces]
    # fixed r = 1 replaces the first N states by the unsafe prototype: every answer starts a refusal
    assert df[df.fixed_r == 1.0].refused.all()
    fig = metric_vs_factor(df, "use_context", "refused", color="label")
    assert len(fig.data) == 2
    assert two_factor_heatmap(df, "use_context", "label", "refused").data[0].z.shape == (2, 2)


def test_grid_resumes_without_recomputing(tmp_path: Path) -> None:
    calls: list[Any] = []

    def evaluator(setting: dict[str, Any], dataset: list[int]) -> list[dict[str, Any]]:
        calls.append(dict(setting))
        if setting["a"] == 2 and len(calls) == 2 and crash["on"]:
            raise KeyboardInterrupt  # a run killed in its second setting
        return [{"y": x * setting["a"] + setting["b"]} for x in dataset]

    crash = {"on": True}
    grid = {"a": [1, 2, 3], "b": [0.5]}
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, evaluator, [1, 2, 3], out=tmp_path, progress=False)
    assert len(list((tmp_path / "settings").glob("*.json"))) == 1  # the finished setting survived
    crash["on"] = False
    calls.clear()
    df = run_grid(grid, evaluator, [1, 2, 3], out=tmp_path, progress=False)
    assert [c["a"] for c in calls] == [2, 3]  # the finished setting was not recomputed
    assert sorted(df.y) == sorted(x * a + 0.5 for a in (1, 2, 3) for x in (1, 2, 3))
    fresh = run_grid(grid, evaluator, [1, 2, 3], out=None, progress=False)
    assert fresh.sort_values(["a", "example"]).y.tolist() == df.sort_values(["a", "example"]).y.tolist()


def test_unknown_factor_and_empty_dataset(toy: mi.MLLM, proto: UnsafePrototype, data: list[Any]) -> None:
    with pytest.raises(KeyError, match="Unknown ablation factor"):
        run_grid({"gama": [0.3]}, moras_evaluator(toy, proto, CAL), data, progress=False)
    with pytest.raises(ValueError, match="empty dataset"):
        run_grid({"gamma": [0.3]}, moras_evaluator(toy, proto, CAL), [], progress=False)


def test_attention_evaluator_matches_hf_eager(toy: mi.MLLM, data: list[Any]) -> None:
    df = run_grid({"layer": [1], "heads": ["all"]}, attention_evaluator(toy, batch_size=2), data, progress=False)
    for i, q in enumerate(data):
        enc = toy.processor(images=q.image, text=toy.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.question}]}],
            add_generation_prompt=True), return_tensors="pt")
        with torch.no_grad():
            att = toy.hf(**enc, output_attentions=True).attentions[1][0, :, -1]  # [H, keys]
        img = (enc["input_ids"][0] == toy.hf.config.image_token_id).nonzero().flatten()
        a = att[:, img].double().mean(0).numpy()  # a* over all heads, 6×6 grid of 8 px cells
        x0, y0, x1, y1 = q.box
        frac = np.array([max(0, min(x1, 8 * (j % 6) + 8) - max(x0, 8 * (j % 6)))
                         * max(0, min(y1, 8 * (j // 6) + 8) - max(y0, 8 * (j // 6))) / 64 for j in range(36)])
        share = float((a * frac).sum() / a.sum())
        row = df[df.example == i].iloc[0]
        assert row.share == pytest.approx(share, abs=1e-6)
        assert row.ratio == pytest.approx(share / ((x1 - x0) * (y1 - y0) / 48**2), rel=1e-6)


def test_score_changing_factors_refit_the_calibration_or_are_refused(toy: mi.MLLM, proto: UnsafePrototype,
                                                                     data: list[Any]) -> None:
    """(x0, k) fitted under N = 3 do not apply at N = 1: refused without calibration pairs; with them the
    setting's r equals an independent MoRAS.calibrate(..., n_tokens=1) + run on the same pairs."""
    from moras_interp.organisms import toy_examples

    calib = toy_examples(3, 3, seed=0, split="calib")
    with pytest.raises(ValueError, match=r"changes n_tokens=1 .*calibration_data="):
        run_grid({"n_tokens": [1]}, moras_evaluator(toy, proto, CAL, max_new_tokens=4), data, progress=False)
    ev = moras_evaluator(toy, proto, CAL, max_new_tokens=4, calibration_data=calib)
    df = run_grid({"n_tokens": [1], "gamma": [0.3]}, ev, data, progress=False).sort_values("example")
    ref = MoRAS.calibrate(toy, calib, harmful_text=proto.prompts, n_tokens=1, progress=False)
    traces = ref.run([q.image for q in data], [q.question for q in data], max_new_tokens=4, progress=False)
    assert np.allclose(df.risk.to_numpy(float), [t.risk for t in traces], atol=1e-5)
    assert list(df.answer) == [t.answer for t in traces]
    same = run_grid({"gamma": [0.3]}, moras_evaluator(toy, proto, CAL, max_new_tokens=4), data, progress=False)
    assert len(same) == len(data)  # the base configuration needs no refit


def test_a_tensor_prototype_is_not_silently_rebuilt_from_other_prompts(toy: mi.MLLM, proto: UnsafePrototype,
                                                                       data: list[Any]) -> None:
    bare = UnsafePrototype(dict(proto.states), provenance={"n_tokens": 3})  # no prompts (as from_tensor)
    with pytest.raises(ValueError, match="records no prompts to rebuild it from"):
        run_grid({"steer_layer": [0]}, moras_evaluator(toy, bare, CAL, max_new_tokens=4), data, progress=False)


def test_a_hand_edited_cache_file_is_refused(tmp_path: Path) -> None:
    def evaluator(setting: dict[str, Any], dataset: Any) -> list[dict[str, Any]]:
        return [{"y": setting["a"] * x} for x in dataset]

    run_grid({"a": [1]}, evaluator, [1, 2], out=tmp_path, progress=False)
    (f,) = (tmp_path / "settings").glob("*.json")
    f.write_text(f.read_text().replace('"y": 2', '"y": 999'))
    with pytest.raises(ValueError, match="does not match its checksum"):
        run_grid({"a": [1]}, evaluator, [1, 2], out=tmp_path, progress=False)


SCALE = 1


def _helper(x: int) -> int:
    return x * SCALE


def test_grid_cache_sees_changed_globals_and_helpers(tmp_path: Path) -> None:
    """An evaluator reading a module-level setting or helper: changing them is another run, not a resume."""
    global SCALE

    def evaluator(setting: dict[str, Any], dataset: Any) -> list[dict[str, Any]]:
        return [{"m": setting["a"] * _helper(x) * SCALE} for x in dataset]

    run_grid({"a": [1]}, evaluator, [1, 2], out=tmp_path, progress=False)
    try:
        SCALE = 10
        with pytest.raises(ValueError, match="SCALE"):
            run_grid({"a": [1]}, evaluator, [1, 2], out=tmp_path, progress=False)
    finally:
        SCALE = 1
    assert run_grid({"a": [1]}, evaluator, [1, 2], out=tmp_path, progress=False).m.tolist() == [1, 2]


def test_max_new_tokens_is_an_ablation_factor_and_a_double_setting_is_refused(toy: mi.MLLM, proto: UnsafePrototype,
                                                                            data: list[Any], tmp_path: Path) -> None:
    """Without an evaluator-level max_new_tokens the grid's value reaches the answers (reference: MoRAS.run with
    that length, token for token); fixing it in both places is refused instead of one silently winning."""
    sub = data[:2]
    df = run_grid({"max_new_tokens": [2, 6]}, moras_evaluator(toy, proto, CAL, batch_size=2), sub, out=tmp_path,
                  progress=False)
    for n in (2, 6):
        ref = MoRAS(toy, proto, CAL, MoRASConfig(max_new_tokens=n)).run([q.image for q in sub],
                                                                        [q.question for q in sub], progress=False)
        got = df[df.max_new_tokens == n].sort_values("example")
        assert list(got.answer) == [t.answer for t in ref]
    assert set(df[df.max_new_tokens == 2].answer) != set(df[df.max_new_tokens == 6].answer)
    with pytest.raises(ValueError, match=r"varies max_new_tokens .* fixes it .*max_new_tokens=8"):
        run_grid({"max_new_tokens": [2]}, moras_evaluator(toy, proto, CAL, max_new_tokens=8), sub, progress=False)
