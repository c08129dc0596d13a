"""Real-checkpoint hazards: generation_config processors, tokenizers without pad token, bad labels, device args."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import moras_interp as mi
from moras_interp.models.tiny import build_tiny
from moras_interp.moras.pipeline import _examples


def test_greedy_ignores_a_checkpoints_repetition_penalty() -> None:
    hf, proc = build_tiny("llava")
    model = mi.load_model(hf, processor=proc)
    batch = model.prepare([None], ["a b c"])
    hf.generation_config.repetition_penalty = 5.0  # as some checkpoints ship
    ours = model.generate(batch, max_new_tokens=12).new_tokens
    ids = batch.inputs["input_ids"]
    with torch.no_grad():  # reference: plain argmax decoding without cache
        for _ in range(12):
            nxt = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    ref = ids[:, batch.inputs["input_ids"].shape[1]:]
    n = ours.shape[1]
    assert torch.equal(ours, ref[:, :n])


def test_tokenizer_without_pad_token_pads_with_eos() -> None:
    hf, proc = build_tiny("llava")
    model = mi.load_model(hf, processor=proc)
    proc.tokenizer.pad_token = None
    batch = model.prepare([None, None], ["a", "a b c d e"])
    assert proc.tokenizer.pad_token == proc.tokenizer.eos_token
    assert batch.inputs["attention_mask"][0, 0] == 0 and bool(batch.inputs["attention_mask"][:, -1].all())


def test_unrecognised_labels_are_an_error_not_safe() -> None:
    assert _examples([(None, "q", "Unsafe "), (None, "q", "benign")])[2] == [True, False]
    with pytest.raises(ValueError, match="example 0: label 'malicious' is not a safety label"):
        _examples([(None, "q", "malicious")])


def test_device_and_device_map_together_are_refused(tmp_path: Path) -> None:
    hf, proc = build_tiny("llava")
    hf.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="either device"):
        mi.load_model(str(tmp_path), device="cpu", device_map="auto")
    m = mi.load_model(str(tmp_path), device="cpu", dtype="bfloat16")  # loaded straight onto the device
    assert m.dtype == torch.bfloat16 and m.device.type == "cpu"


def test_prepare_moras_refuses_to_reuse_a_setup_built_differently(tmp_path: Path) -> None:
    from moras_interp.moras import MoRASConfig, prepare_moras
    from moras_interp.organisms import tasks, toy_examples

    toy = mi.load_model("toy-llava")
    calib = toy_examples(2, 2, split="calib")
    prompts = tasks.toy_harmful_requests()[:8]
    first = prepare_moras(toy, calibration=calib, out=tmp_path, harmful_prompts=prompts, progress=False)
    again = prepare_moras(toy, calibration=calib, out=tmp_path, harmful_prompts=prompts, progress=False)
    assert again.calibration.x0 == first.calibration.x0  # same spec: reused
    with pytest.raises(ValueError, match="gamma"):
        prepare_moras(toy, calibration=calib, out=tmp_path, harmful_prompts=prompts, progress=False,
                      config=MoRASConfig(gamma=0.9))
    with pytest.raises(ValueError, match="harmful_prompts"):
        prepare_moras(toy, calibration=calib, out=tmp_path, harmful_prompts=prompts[:4], progress=False)


def test_system_prompt_reaches_every_stage_and_must_match_the_prototype() -> None:
    from moras_interp.moras import Calibration, MoRAS, MoRASConfig, UnsafePrototype
    from moras_interp.moras.prompts import LLAVA_V1_SYSTEM

    hf, proc = build_tiny("llava")
    model = mi.load_model(hf, processor=proc)
    proto = UnsafePrototype.build(model, ["a b", "c d e"], 3, progress=False, system=LLAVA_V1_SYSTEM)
    with pytest.raises(ValueError, match="system prompt"):
        MoRAS(model, proto, Calibration(0.5, 10.0))  # default config sends no system prompt
    moras = MoRAS(model, proto, Calibration(0.5, 10.0), MoRASConfig(system=LLAVA_V1_SYSTEM))
    from moras_interp.models.tiny import tiny_image

    tr = moras.run([tiny_image()], ["what is this ?"], max_new_tokens=2, progress=False)[0]
    ref = model.prepare([tiny_image()], ["what is this ?"], system=LLAVA_V1_SYSTEM).texts[0]
    assert tr.prompts["answer"] == ref
    for stage in ("context", "risk", "answer"):
        assert tr.prompts[stage].startswith(LLAVA_V1_SYSTEM)  # the tiny LLaVA template renders it first


def test_preset_calibration_on_another_model_warns() -> None:
    from moras_interp.moras import UnsafePrototype, prepare_moras

    hf, proc = build_tiny("qwen2_vl")
    model = mi.load_model(hf, processor=proc)
    proto = UnsafePrototype.build(model, ["a b"], 3, progress=False)
    with pytest.warns(UserWarning, match="may not transfer"):
        prepare_moras(model, calibration="llava-1.5-7b", harmful_prompts=proto.prompts, progress=False,
                      force_preset=True)


def test_preset_with_other_prototype_prompts_is_refused_before_the_prototype_is_built(monkeypatch) -> None:
    from moras_interp.moras import UnsafePrototype, prepare_moras

    hf, proc = build_tiny("llava")
    model = mi.load_model(hf, processor=proc)

    def no_build(*a, **k):
        raise AssertionError("the prototype was built before the preset was checked")

    monkeypatch.setattr(UnsafePrototype, "build", no_build)
    with pytest.raises(ValueError, match=r"sha256 .*the preset's c98c319b.*--force-preset"):
        prepare_moras(model, calibration="llava-1.5-7b", harmful_prompts=["a b"], progress=False)
