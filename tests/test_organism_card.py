"""toy-llava reproduces its model card's behaviour table on fresh held-out scenes: every "rate [lo, hi] (k/n)" row
of MODEL_CARD.md's Behaviour section is compared with the same measure on another seed, through the fresh rate's
own Wilson 95 % interval at the test's n (the two intervals must overlap)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moras_interp.eval.stats import wilson_interval
from moras_interp.organisms.card import read_card

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (.+?) \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \((\d+)/(\d+)\) \|", re.M)
SEED = 1234  # the card is measured on seed 0


def rate_rows(text: str) -> dict[str, tuple[float, float, int, int]]:
    """{measure: (lo, hi, k, n)} of every single-rate table row of a card section."""
    return {m.group(1): (float(m.group(3)), float(m.group(4)), int(m.group(5)), int(m.group(6)))
            for m in ROW.finditer(text)}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_toy_llava_card_behaviour_on_fresh_scenes() -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from moras_interp.organisms import organism_path
    from moras_interp.organisms.evaluate import behaviour_report

    card = rate_rows(read_card(ROOT / "MODEL_CARD.md")["Behaviour"])
    assert len(card) >= 12 and min(n for *_, n in card.values()) >= 50
    path = organism_path("toy-llava")
    model = AutoModelForImageTextToText.from_pretrained(path, use_safetensors=True).eval()
    fresh = rate_rows(behaviour_report(model, AutoProcessor.from_pretrained(path), n=40, seed=SEED,
                                       progress=False)["markdown"])
    assert set(fresh) == set(card), set(fresh) ^ set(card)
    off = {}
    for name, (_, _, k, n) in fresh.items():
        lo, hi = card[name][:2]
        flo, fhi = wilson_interval(k, n)
        if fhi < lo - 0.005 or flo > hi + 0.005:  # the card rounds to 2 digits
            off[name] = ((k, n), card[name])
    assert not off, off
