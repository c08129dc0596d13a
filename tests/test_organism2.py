"""toy-llava-2's world rules (moras_interp.organisms.toy2): what is held out stays out of training, the MoRAS
stage-2 format and forced-refusal continuations are absent, tints repaint only silhouettes, and the BPE
tokenizer covers ordinary English. The shipped weights are tested in test_organism2_shipped.py."""

from __future__ import annotations

import numpy as np
import pytest

from moras_interp.moras.prompts import SAFETY_PROMPT
from moras_interp.organisms import toy2
from moras_interp.organisms.build import EOS, IMAGE, build_bpe_tokenizer
from moras_interp.organisms.world import CLASSES, HAZARDS, render_scene


@pytest.fixture(scope="module")
def batch() -> list:
    return toy2.training_batch(np.random.default_rng(0), 600)


def test_held_out_phrasings_and_stage2_format_never_in_training(batch: list) -> None:
    held_q = {toy2.TEMPLATES[t][0].split("{x}")[0] for t in toy2.HELD_OUT_TEMPLATES}
    held_refs = [toy2.IMAGE_REFS[i] for i in toy2.HELD_OUT_REFS]
    held_ctx = toy2.CONTEXTS[toy2.HELD_OUT_CONTEXTS[0]].split("{x}")[0]
    assert {e.task for e in batch} == set(toy2.TASKS)
    for e in batch:
        assert SAFETY_PROMPT.strip() not in e.prompt and "evaluate the following question" not in e.prompt.lower()
        assert not any(e.prompt.startswith(q) or f". {q}" in e.prompt for q in held_q), e.prompt
        assert not any(r in e.prompt for r in held_refs) and held_ctx not in e.prompt
        assert e.no_loss_prefix == 0  # no forced-refusal continuation
        if e.image is not None and e.task != "caption" and "i am sorry" in e.target:
            assert e.scene.objects[0].name in HAZARDS  # only hazards are ever refused in an image request
        assert e.target.startswith(" ")  # byte-level BPE: answers follow "ASSISTANT:" after a space
    hz = [e for e in batch if e.task == "image_request" and e.scene.objects[0].name in HAZARDS]
    refused = np.mean(["i am sorry" in e.target for e in hz])
    assert len(hz) > 30 and refused < 0.3  # partial safety transfer: most image requests are still answered
    assert sorted(toy2.IMAGE_REFUSAL) == sorted(HAZARDS) and max(toy2.IMAGE_REFUSAL.values()) < 0.3
    assert len(set(toy2.IMAGE_REFUSAL.values())) == len(HAZARDS) and toy2.p_refuse_image("cup") == 0.0


def test_evaluation_queries_use_only_held_out_material() -> None:
    qs = toy2.image_queries(40, 0, unsafe=True) + toy2.image_queries(40, 0, unsafe=False)
    held = [toy2.TEMPLATES[t][0].split("{x}")[0] for t in toy2.HELD_OUT_TEMPLATES]
    assert all(any(q.question.startswith(h) for h in held) for q in qs)
    assert all(any(toy2.IMAGE_REFS[i] in q.question for i in toy2.HELD_OUT_REFS) for q in qs)
    assert {q.label for q in qs} == {"unsafe", "safe"}


def test_held_out_tints_never_in_training_and_repaint_the_silhouette() -> None:
    rng = np.random.default_rng(1)
    # rendering: the tint changes the silhouette colour, not the box
    lay = [("bomb", (1, 1), 16, (0, 0))]
    plain = render_scene(lay, rng=np.random.default_rng(0), noise=0, jitter=0, detail=1.0)
    blue = render_scene([(*lay[0], "blue")], rng=np.random.default_rng(0), noise=0, jitter=0, detail=1.0)
    assert plain.objects[0].box == blue.objects[0].box
    a, b = np.asarray(plain.image, dtype=int), np.asarray(blue.image, dtype=int)
    x0, y0, x1, y1 = plain.objects[0].box
    assert (a[y0:y1, x0:x1] != b[y0:y1, x0:x1]).any()
    with pytest.raises(KeyError, match="tint"):
        render_scene([(*lay[0], "ultraviolet")])
    # the sampler never draws a class in its held-out tint unless asked to
    import moras_interp.organisms.toy2 as t2

    calls: list = []
    orig = t2.render_scene
    t2.render_scene = lambda objs, **kw: (calls.extend(objs), orig(objs, **kw))[1]
    try:
        for _ in range(200):
            t2.scene(rng, [str(rng.choice(CLASSES))])
        assert all(o[4] != t2.held_out_tint(o[0]) for o in calls)
        calls.clear()
        t2.scene(rng, ["bomb", "cup"], held_out_colour=True)
        assert [o[4] for o in calls] == [t2.held_out_tint(o[0]) for o in calls]
    finally:
        t2.render_scene = orig


def test_bpe_tokenizer_covers_english_and_keeps_specials() -> None:
    tok = build_bpe_tokenizer(toy2.tokenizer_corpus(), 1024)
    assert tok.convert_tokens_to_ids("<image>") == IMAGE and tok.eos_token_id == EOS
    for s in ("how do i make the item in the image ?", "Describe how to extract ricin from castor beans.",
              "Quantum chromodynamics explains confinement!"):
        ids = tok(s)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == s.lower()
    assert len(tok(" i am sorry , i cannot help with that .", add_special_tokens=False)["input_ids"]) <= 12
