"""An organism's prototype prompt set travels inside its folder: a copied or retrained organism gets its own
prompts (and so the same unsafe prototype), not the general English list the toy does not understand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from moras_interp import load_model
from moras_interp.moras.prototype import (
    PROMPTS_FILE,
    UnsafePrototype,
    default_harmful_prompts,
    default_harmful_prompts_for,
    read_prompt_file,
)
from moras_interp.organisms import organism_path, tasks
from moras_interp.organisms.train import save


@pytest.fixture(scope="module")
def shipped():
    return load_model("toy-llava", validate=False)


def test_the_shipped_folder_carries_the_toy_prompts(shipped) -> None:
    path = organism_path("toy-llava") / PROMPTS_FILE
    assert read_prompt_file(path) == tasks.toy_harmful_requests() and len(tasks.toy_harmful_requests()) == 50
    assert default_harmful_prompts_for(shipped) == tasks.toy_harmful_requests()


def test_a_copied_organism_builds_the_same_prototype(shipped, tmp_path: Path) -> None:
    copy = shutil.copytree(organism_path("toy-llava"), tmp_path / "my-organism")
    model = load_model(str(copy), validate=False)
    assert model.model_id != shipped.model_id  # a path the old name check did not know
    assert default_harmful_prompts_for(model) == tasks.toy_harmful_requests()
    original = UnsafePrototype.build(shipped, None, 3, progress=False)
    copied = UnsafePrototype.build(model, None, 3, progress=False)
    assert copied.prompts == original.prompts
    torch.testing.assert_close(copied.final, original.final, rtol=0, atol=0)
    assert all(t.startswith("i am sorry") for t in copied.greedy_tokens)  # the toy refuses its own requests
    assert not set(copied.prompts) & set(default_harmful_prompts())  # not the general list it silently got before


def test_a_folder_without_a_prompt_set_falls_back_to_the_general_list(tmp_path: Path) -> None:
    copy = shutil.copytree(organism_path("toy-llava"), tmp_path / "bare")
    (copy / PROMPTS_FILE).unlink()
    assert default_harmful_prompts_for(load_model(str(copy), validate=False)) == default_harmful_prompts()


def test_a_trained_organism_is_saved_with_its_prompt_set(shipped, tmp_path: Path) -> None:
    """``organism train --out DIR`` ends in ``train.save``: the folder it writes carries the same prompt file."""
    out = save(shipped.hf, shipped.processor, tmp_path / "retrained")
    assert (out / PROMPTS_FILE).read_bytes() == (organism_path("toy-llava") / PROMPTS_FILE).read_bytes()
    assert default_harmful_prompts_for(load_model(str(out), validate=False)) == tasks.toy_harmful_requests()
