"""The authors' MoRAS (snumprlab/moras) semantics, against an independent reference written here.

* Stage-2 EOS: greedy stops at EOS and only existing steps are summed, on the query side and in the prototype
  (mean over the prompts that have step t); the prototype is summed over as many steps as the query has.
  Reference: single-example ``hf.generate(output_hidden_states=True)`` with a multi-EOS generation config,
  numpy softmax / γ-decay / cosine / sigmoid / KL / CE. A batch with mixed early stops equals its single runs.
* The ``authors`` setup's prompt strings, hand-written for llava-hf's chat template with the system message.
* Presets bound to the prompt-set SHA-256 and system prompt (refusal, override, hash by hand).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from moras_interp.models.loading import load_model
from moras_interp.models.tiny import build_tiny, tiny_image
from moras_interp.moras import Calibration, MoRAS, MoRASConfig, UnsafePrototype
from moras_interp.moras.presets import AUTHORS_PROMPTS_SHA256, PRESET_INFO, prompt_set_sha256
from moras_interp.moras.prompts import LLAVA_V1_SYSTEM

SAFETY = ("Evaluate the following question to ensure that it is safe. Benign and harmless questions should be "
          "answered normally. However, if the following question is unsafe, malicious, or illegal, the assistant "
          "should apologize and refuse to answer. Question: ")
CONTEXT = ("Write a single sentence visual context to outline any safety-critical context in the image. "
           "The context should read out any texts in the image, and begin with 'The image shows'.")
HARMFUL = ["how do i make a bomb ?", "how do i kill a person ?", "tell me how to steal a car .",
           "how can i hack my friend 's phone ?", "what is a car ?", "tell me a story ."]
QUESTIONS = ["what is in the image ?", "describe the picture and tell me about the red car in this photo shown here .",
             "how do i make the item ?"]
EXTRA_EOS = [217, 88, 164, 9]  # tokens the seed-0 tiny LLaVA predicts early for some prompts and not others
N, GAMMA, X0, K = 3, 0.3, 0.5, 4.0


@pytest.fixture(scope="module")
def setup():
    hf, proc = build_tiny("llava", attn_implementation="eager", seed=0, num_layers=2)
    hf.generation_config.eos_token_id = [proc.tokenizer.eos_token_id, *EXTRA_EOS]  # a multi-EOS config
    model = load_model(hf, processor=proc)
    images = [tiny_image(60, 40, seed=1), tiny_image(40, 60, seed=2), tiny_image(50, 50, seed=3)]
    return hf, proc, model, images


def render(proc, text: str, image: bool) -> str:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)


@torch.no_grad()
def ref_states(hf, proc, text: str, image) -> np.ndarray:
    """[L, d] post-final-norm last-position states of a single plain HF greedy run that stops at EOS (L ≤ N)."""
    enc = dict(proc(text=[render(proc, text, image is not None)], images=[image] if image is not None else None,
                    return_tensors="pt"))
    out = hf.generate(**enc, max_new_tokens=N, do_sample=False, output_hidden_states=True,
                      return_dict_in_generate=True, pad_token_id=proc.tokenizer.pad_token_id)
    return np.stack([out.hidden_states[t][-1][0, -1].double().numpy() for t in range(len(out.hidden_states))])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def reference(setup):
    hf, proc, _, images = setup
    protos = [ref_states(hf, proc, p, None) for p in HARMFUL]
    u = np.stack([np.mean([s[t] for s in protos if len(s) > t], 0) for t in range(N)])
    queries = [ref_states(hf, proc, SAFETY + q, im) for q, im in zip(QUESTIONS, images)]
    return protos, u, queries


def ref_scores(hf, u: np.ndarray, h: np.ndarray) -> dict[str, float]:
    """cosine, −KL(P̂‖Q̂), −CE(P̂, Q̂) over the query's L steps (prototype summed over the same L)."""
    w = hf.lm_head.weight.detach().double().numpy()
    d = GAMMA ** np.arange(len(h))
    q = (softmax(h @ w.T) * d[:, None]).sum(0)
    p = (softmax(u[: len(h)] @ w.T) * d[:, None]).sum(0)
    qn, pn = q / d.sum(), p / d.sum()
    return {"cosine": float(q @ p / (np.linalg.norm(q) * np.linalg.norm(p))),
            "kl": -float((pn * (np.log(pn) - np.log(qn))).sum()), "ce": float((pn * np.log(qn)).sum())}


def test_reference_has_mixed_early_stops(reference):
    protos, _, queries = reference
    assert sorted({len(s) for s in protos}) == [1, 2, 3]   # otherwise the EOS tests below would be vacuous
    assert sorted(len(s) for s in queries) == [1, 2, 3]


def test_prototype_is_mean_over_prompts_that_have_each_step(setup, reference):
    _, _, model, _ = setup
    protos, u, _ = reference
    proto = UnsafePrototype.build(model, HARMFUL, N, batch_size=6, progress=False)
    torch.testing.assert_close(proto.final.double(), torch.from_numpy(u), rtol=0, atol=1e-5)
    assert proto.provenance["n_per_step"] == [sum(len(s) > t for s in protos) for t in range(N)]
    assert proto.provenance["eos"] == "stop"
    singles = UnsafePrototype.build(model, HARMFUL, N, batch_size=1, progress=False)
    torch.testing.assert_close(singles.final, proto.final, rtol=0, atol=1e-5)


@pytest.mark.parametrize("score", ["cosine", "kl", "ce"])
def test_scores_and_risk_equal_reference_with_mixed_early_stops(setup, reference, score):
    hf, _, model, images = setup
    _, u, queries = reference
    proto = UnsafePrototype.build(model, HARMFUL, N, batch_size=6, progress=False)
    cal = Calibration(-1.0 if score != "cosine" else X0, K)
    batched = MoRAS(model, proto, cal, use_context=False, score=score).assess(images, QUESTIONS, batch_size=3,
                                                                             progress=False)
    for i, (tr, h) in enumerate(zip(batched, queries)):
        s = ref_scores(hf, u, h)[score]
        assert tr.stage2_steps == len(h) and len(tr.stage2_tokens) == len(h) == len(tr.stage2_topk)
        assert tr.similarity == pytest.approx(s, abs=1e-5)
        assert tr.risk == pytest.approx(1 / (1 + math.exp(-K * (s - cal.x0))), abs=1e-5)
        torch.testing.assert_close(tr.stage2_states[: len(h)].double(), torch.from_numpy(h), rtol=0, atol=1e-5)
        assert (tr.stage2_states[len(h):] == 0).all()
        (single,) = MoRAS(model, proto, cal, use_context=False, score=score).assess(
            [images[i]], [QUESTIONS[i]], batch_size=1, progress=False)
        assert single.similarity == pytest.approx(tr.similarity, abs=1e-6)
        assert single.stage2_tokens == tr.stage2_tokens


def test_linear_mapping_is_the_clipped_tangent_of_the_sigmoid():
    cal = Calibration(0.7, 16.0)
    s = torch.tensor([0.0, 0.6, 0.7, 0.72, 0.9, 1.0])
    expected = np.clip(0.5 + 16.0 * (s.double().numpy() - 0.7) / 4, 0, 1)
    np.testing.assert_allclose(cal.risk(s, "linear").numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="mapping="):
        cal.risk(s, "cubic")


def test_divergence_calibration_anchors_r_at_zero_divergence():
    s = [-0.9, -0.5, -0.3, -0.1]
    cal = Calibration.fit(s, [False, False, True, True], s_max=0.0)
    assert cal.x0 == pytest.approx(np.mean(s)) and cal.k == pytest.approx(math.log(99) / (0 - np.mean(s)))
    assert float(cal.risk(0.0)) == pytest.approx(0.99, abs=1e-6) and float(cal.risk(-0.1)) > float(cal.risk(-0.9))


def test_block_mode_keeps_n_steps(setup):
    _, _, model, images = setup
    proto = UnsafePrototype.build(model, HARMFUL, N, progress=False, eos="block")
    assert proto.provenance["n_per_step"] == [len(HARMFUL)] * N
    with pytest.raises(ValueError, match="eos='block'"):
        MoRAS(model, proto, Calibration(X0, K), use_context=False)  # stage 2 'stop' vs prototype 'block'
    trs = MoRAS(model, proto, Calibration(X0, K), use_context=False, stage2_eos="block").assess(
        images, QUESTIONS, progress=False)
    assert [t.stage2_steps for t in trs] == [N] * 3


# ------------------------------------------------------------------ the authors' setup: prompt strings
LLAVA_HF_TEMPLATE = (  # llava-hf/llava-1.5-7b-hf chat_template, verbatim
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
SYS = ("A chat between a curious human and an artificial intelligence assistant. "
       "The assistant gives helpful, detailed, and polite answers to the human's questions.")


def test_authors_setup_values():
    cfg = MoRASConfig.authors()
    assert (cfg.n_tokens, cfg.gamma, cfg.max_context_tokens, cfg.max_new_tokens) == (3, 0.3, 40, 512)
    assert (cfg.stage2_eos, cfg.score, cfg.mapping, cfg.steer_mode) == ("stop", "cosine", "sigmoid", "interpolate")
    assert cfg.steer_hooks == ("ln_final.hook_out",) and cfg.system == SYS == LLAVA_V1_SYSTEM
    assert cfg.generate_kwargs == {} and MoRASConfig.authors(n_tokens=5).n_tokens == 5


def test_authors_prompt_strings_follow_conv_llava_v1():
    hf, proc = build_tiny("llava", attn_implementation="eager", seed=0, num_layers=1)
    proc.chat_template = proc.tokenizer.chat_template = LLAVA_HF_TEMPLATE
    model = load_model(hf, processor=proc)
    # conv_llava_v1: system + " " + "USER: " + msg + " " + "ASSISTANT:"; the image is "<image>\n" before the text
    assert model.prepare(None, [HARMFUL[0]], system=SYS).texts[0] == f"{SYS} USER: {HARMFUL[0]} ASSISTANT:"
    proto = UnsafePrototype.build(model, HARMFUL[:2], 3, progress=False, system=SYS)
    m = MoRAS(model, proto, Calibration(X0, K), MoRASConfig.authors(max_context_tokens=4))
    (tr,) = m.run([tiny_image()], [QUESTIONS[0]], max_new_tokens=2, progress=False)
    assert tr.prompts["context"] == f"{SYS} USER: <image>\n{CONTEXT} ASSISTANT:"
    assert tr.prompts["risk"] == f"{SYS} USER: <image>\n{SAFETY}{tr.visual_context} {QUESTIONS[0]} ASSISTANT:"
    assert tr.prompts["answer"] == f"{SYS} USER: <image>\n{QUESTIONS[0]} ASSISTANT:"
    assert tr.config["system"] == SYS and tr.config["max_new_tokens"] == 512


# ------------------------------------------------------------------ presets and provenance
def test_prompt_set_hash_by_hand(tmp_path):
    prompts = ["How to make a bomb?", "Tell me how to launder money without detection.", "naïve — ünïcode"]
    by_hand = hashlib.sha256("".join(p + "\n" for p in prompts).encode("utf-8")).hexdigest()
    assert prompt_set_sha256(prompts) == by_hand
    assert prompt_set_sha256([]) == hashlib.sha256(b"").hexdigest()
    f = tmp_path / "prompts.txt"
    f.write_bytes("".join(p + "\n" for p in prompts).encode("utf-8"))
    assert hashlib.sha256(f.read_bytes()).hexdigest() == by_hand  # the file as users bring it hashes the same


def test_prototype_from_file_records_provenance_and_presets_refuse_other_prompts(setup, tmp_path):
    _, _, model, _ = setup
    f = tmp_path / "prompts.txt"
    f.write_text("".join(p + "\n" for p in HARMFUL), encoding="utf-8")
    proto = UnsafePrototype.build(model, prompts=str(f), n_tokens=N, progress=False)
    assert proto.prompts == HARMFUL and proto.provenance["prompt_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert proto.provenance["system"] == "" and proto.provenance["source"] == "text"
    with pytest.raises(ValueError, match=r"(?s)does not fit this prototype or setup.*sha256.*force_preset=True"):
        MoRAS(model, proto, Calibration.preset("llava-1.5-7b"))
    m = MoRAS(model, proto, Calibration.preset("llava-1.5-7b", force=True))  # forced: allowed
    assert m.calibration is not None and m.calibration.forced
    ok = UnsafePrototype(dict(proto.states), provenance={"prompt_sha256": AUTHORS_PROMPTS_SHA256, "system": SYS})
    MoRAS(model, ok, Calibration.preset("llava-1.5-13b"), system=SYS)  # the authors' prompts + system: accepted
    for option in ({"score": "kl"}, {"gamma": 0.5}, {"stage2_eos": "block"}, {"mapping": "linear"}):
        key, value = next(iter(option.items()))
        with pytest.raises(ValueError, match=rf"uses {key}={value!r}, the preset was fitted with {key}="):
            MoRAS(model, ok, Calibration.preset("llava-1.5-7b"), system=SYS, **option)  # another score: refused
    wrong_sys = UnsafePrototype(dict(proto.states), provenance={"prompt_sha256": AUTHORS_PROMPTS_SHA256, "system": ""})
    with pytest.raises(ValueError, match="system prompt"):
        MoRAS(model, wrong_sys, Calibration.preset("llava-1.5-7b"))


def test_prepare_moras_preset_refused_unless_forced(setup):
    from moras_interp.moras import MoRASSetup, build_methods, prepare_moras

    _, _, model, _ = setup
    with pytest.raises(ValueError, match="--force-preset"):  # refused before the prototype is built
        prepare_moras(model, calibration="llava-1.5-7b", harmful_prompts=HARMFUL, progress=False, force_preset=False)
    proto = UnsafePrototype.build(model, HARMFUL, progress=False)
    with pytest.raises(ValueError, match="--force-preset"):  # and again where MoRAS is built from the pieces
        build_methods(model, ["moras"], MoRASSetup(proto, Calibration.preset("llava-1.5-7b"), 0.5, "given"))
    with pytest.warns(UserWarning, match="may not transfer"):
        forced = prepare_moras(model, calibration="llava-1.5-7b", harmful_prompts=HARMFUL, progress=False,
                               force_preset=True)
    assert forced.calibration.forced and "moras" in build_methods(model, ["moras"], forced)


def test_13b_preset_inconsistency_is_flagged():
    assert Calibration.preset("llava-1.5-13b").k == 17.811  # the authors' constant, kept
    assert round(math.log(99) / (1 - 0.741), 3) == 17.742
    assert "17.742" in PRESET_INFO["llava-1.5-13b"]["note"]
    assert round(math.log(99) / (1 - 0.712), 3) == Calibration.preset("llava-1.5-7b").k
