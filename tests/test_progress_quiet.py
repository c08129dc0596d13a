"""Our entry points are quiet about third-party noise, library use is not changed, and `organism scene` draws the
attention examples' input."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tqdm.std import tqdm as std_tqdm
from transformers.utils import logging as hf_logging

from moras_interp.cli import main
from moras_interp.cli.organism import scene_parser
from moras_interp.progress import quiet_third_party
from moras_interp.progress import tqdm as our_tqdm


def test_text_bars_without_ipywidgets() -> None:
    if importlib.util.find_spec("ipywidgets") is None:
        assert our_tqdm is std_tqdm  # what tqdm.auto falls back to, without its IProgress warning
    else:
        from tqdm.auto import tqdm as auto_tqdm

        assert our_tqdm is auto_tqdm


def test_quiet_third_party_restores_everything() -> None:
    hf_logging.enable_progress_bar()
    level = hf_logging.get_verbosity()
    with quiet_third_party():
        assert not hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == hf_logging.ERROR
        with warnings.catch_warnings(record=True) as seen:  # keeps the filters in force, records what passes
            warnings.warn("Kernel is running over TCP without encryption.", UserWarning, stacklevel=1)
            warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a real problem"]  # only the listed harmless ones are hidden
    assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == level
    with warnings.catch_warnings(record=True) as after:
        warnings.warn("Kernel is running over TCP without encryption.", UserWarning, stacklevel=1)
    assert len(after) == 1  # outside the block nothing is filtered


def test_cli_loads_without_transformers_bars_but_library_keeps_them(capsys: pytest.CaptureFixture[str]) -> None:
    from moras_interp.models.loading import load_model

    load_model("toy-llava")
    assert "Loading weights" in capsys.readouterr().err  # library use: transformers' own behaviour
    assert main(["hooks", "--model", "toy-llava"]) == 0
    out = capsys.readouterr()
    assert "Loading weights" not in out.err and "toy-llava" in out.out
    assert hf_logging.is_progress_bar_enabled()  # restored after the command


def test_organism_scene_writes_the_scene_and_prints_its_boxes(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from moras_interp.organisms.world import sample_scene

    out = tmp_path / "scene.png"
    assert main(["organism", "scene", "--objects", "knife,cup", "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    ref = sample_scene(np.random.default_rng(3), names=["knife", "cup"])
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(ref.image))  # lossless: the world's pixels
    rows = [l.split() for l in printed[1:]]
    assert [(r[0], r[1], tuple(map(int, r[3:]))) for r in rows] == [
        (o.name, "hazard" if o.is_hazard else "benign", o.box) for o in ref.objects]
    knife = next(o for o in ref.objects if o.name == "knife")
    x0, y0, x1, y1 = knife.box  # the box is where the drawing is: its pixels differ from the background's
    im = np.asarray(ref.image, dtype=float)
    assert np.abs(im[y0:y1, x0:x1] - np.median(im, axis=(0, 1))).mean() > 10


def test_organism_scene_refuses_unknown_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["organism", "scene", "--objects", "knif", "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moras-interp organism: error: --objects 'knif'") and "knife" in err
    assert not (tmp_path / "s.png").exists()


def test_organism_scene_help_stands_alone() -> None:
    text = " ".join(scene_parser().format_help().split())
    assert "Draw a scene" in text and "(default: scene.png)" in text and "(default: 0)" in text


def test_organism_card_help_names_the_command_and_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["organism", "card", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: moras-interp organism card") and "(default: 40)" in text and "--quiet" in text
