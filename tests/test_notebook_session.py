"""moras_interp.notebooks.setup: what the four notebooks share (model, folders, export, data per organism)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moras_interp.moras.prompts import CONTEXT_PROMPT
from moras_interp.notebooks import ORGANISM_DATA, Session, quiet, setup, unquiet
from moras_interp.organisms import tasks, toy2
from moras_interp.organisms.tasks import scene_key


@pytest.fixture(autouse=True)
def _restore_quiet():
    """setup() silences third-party output for the rest of the process; later tests must not inherit that."""
    yield
    unquiet()


def test_unquiet_restores_what_quiet_silenced() -> None:
    tcp = "Kernel is running over TCP without encryption."
    quiet()
    with warnings.catch_warnings(record=True) as during:
        warnings.warn(tcp, UserWarning, stacklevel=1)
    unquiet()
    with warnings.catch_warnings(record=True) as after:
        warnings.warn(tcp, UserWarning, stacklevel=1)
    assert (len(during), len(after)) == (0, 1)


def _session(organism: str, n: int, data: str | None = None, tmp: Path | None = None) -> Session:
    """A Session for the data methods only (they never touch the model)."""
    return Session(organism, None, tmp or Path("."), tmp or Path("."), data, n)  # type: ignore[arg-type]


def test_setup_resolves_folders_against_the_notebook_and_exports(tmp_path: Path, monkeypatch) -> None:
    """Relative FIGURES lands beside the notebook's folder whatever the working directory; RUNS is keyed by
    model, data and N; export writes a non-blank PNG and an HTML twin; the model is the organism."""
    nbdir, elsewhere = tmp_path / "nbs", tmp_path / "elsewhere"
    nbdir.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("JPY_SESSION_NAME", str(nbdir / "x.ipynb"))  # what Jupyter / execute() set
    s = setup("toy-llava", n=3, figures="../figures")
    assert s.figures == (tmp_path / "figures").resolve() and s.figures.is_dir()
    assert s.runs == (tmp_path / "runs" / "toy-llava-None-N3").resolve()
    assert Path(str(s.model.model_id)).name == "toy-llava"
    assert s.ecso_caption_prompt == CONTEXT_PROMPT  # the caption prompt toy-llava was trained on
    import plotly.graph_objects as go

    s.export(go.Figure(go.Bar(x=["a", "b"], y=[1, 3])), "bars")
    im = np.asarray(Image.open(s.figures / "bars.png").convert("RGB"))
    assert im.std() > 5
    assert "Plotly.newPlot" in (s.figures / "bars.html").read_text(encoding="utf-8")
    assert not any(elsewhere.iterdir())
    with pytest.raises(ValueError, match=r"N \(examples per class\) must be ≥ 1"):
        setup("toy-llava", n=0, figures=str(tmp_path / "f"))


def test_toy_llava_data_is_what_the_notebooks_drew_before() -> None:
    """toy-llava: the held-out stream seed 1 for 01/02, text requests, and toy_examples for 03/04."""
    from moras_interp.organisms import toy_examples

    s = _session("toy-llava", 5)
    unsafe, safe = s.image_queries()
    ref_u, ref_s = tasks.harmful_image_queries(5, seed=1), tasks.benign_image_queries(5, seed=1)
    assert [q.question for q in unsafe] == [q.question for q in ref_u] and [q.box for q in safe] == [q.box for q in ref_s]
    assert [scene_key(q.image) for q in unsafe] == [scene_key(q.image) for q in ref_u]
    tu, ts = s.text_queries()
    assert [q.question for q in tu] == [q.question for q in tasks.harmful_text_queries(5)]
    assert {q.label for q in tu} == {"unsafe"} and {q.label for q in ts} == {"safe"} and len(ts) == 5
    calib, evals = s.examples()
    assert [e.id for e in calib] == [e.id for e in toy_examples(5, 5, 0, "calib")]
    assert [e.text for e in evals] == [e.text for e in toy_examples(5, 5, 0, "eval")]


def test_toy_llava_2_data_uses_its_held_out_phrasings() -> None:
    """toy-llava-2: image queries use only its held-out templates; calib and eval never share a scene; text
    requests are its training phrasings (what it was taught to refuse)."""
    s = _session("toy-llava-2", 4)
    held = {toy2.TEMPLATES[t][0].split("{x}")[0] for t in toy2.HELD_OUT_TEMPLATES}
    unsafe, safe = s.image_queries()
    assert len(unsafe) == len(safe) == 4
    assert {q.label for q in unsafe} == {"unsafe"} and {q.label for q in safe} == {"safe"}
    assert all(any(q.question.startswith(h) for h in held) for q in unsafe + safe)
    assert all(q.box is not None and q.box[2] <= q.image.size[0] for q in unsafe)
    calib, evals = s.examples()
    assert [e.label for e in calib[:4]] == ["unsafe", "safe", "unsafe", "safe"] and len(evals) == 8
    assert not {scene_key(e.image) for e in calib} & {scene_key(e.image) for e in evals}
    assert len({e.id for e in calib + evals}) == 16
    tu, ts = s.text_queries()
    train = {q.question for q in toy2.text_queries(True, held_out=False)}
    assert len(tu) == len(ts) == 4 and {q.question for q in tu} <= train


def test_data_file_overrides_the_organism(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(img)
    rows = [{"text": f"q{i}", "image": str(img), "label": lab, "region": [0, 0, 8, 8]}
            for i, lab in enumerate(["unsafe", "safe", "unsafe", "unsafe", "safe"])]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    s = _session("no-such-organism", 2, str(path))
    unsafe, safe = s.image_queries()
    assert [q.question for q in unsafe] == ["q0", "q2"] and [q.question for q in safe] == ["q1", "q4"]
    assert unsafe[0].box == (0, 0, 8, 8) and unsafe[0].image.size == (32, 32)
    calib, evals = s.examples()
    assert [e.text for e in calib] == ["q0", "q1"] and [e.text for e in evals] == ["q2", "q3", "q4"]


def test_unknown_organism_without_data_says_what_to_do() -> None:
    assert "toy-llava" in ORGANISM_DATA
    with pytest.raises(ValueError, match="DATA"):
        _session("llava-hf/llava-1.5-7b-hf", 2).image_queries()


def test_quiet_leaves_no_traceback_at_interpreter_exit() -> None:
    """quiet() in a plain script: the settings are restored at exit without an "Exception ignored" traceback."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", "from moras_interp.notebooks import quiet; quiet(); quiet(); print('ok')"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok"
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr[-2000:]
