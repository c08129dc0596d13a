"""CLI user errors: one line ``moras-interp <cmd>: error: ...``, exit 2, no traceback (``--debug`` shows it);
output folders checked before the model loads; a finished read-only results folder is still summarised."""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from moras_interp.cli import error_line, is_user_error, main
from moras_interp.models.loading import ModelNotFoundError, _dtype

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, as_user: bool = False, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``python -m moras_interp.cli ARGS`` in a subprocess (``as_user``: without root's permission override)."""
    drop = without_root_override if as_user and os.geteuid() == 0 else None
    return subprocess.run([sys.executable, "-m", "moras_interp.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          preexec_fn=drop)


def assert_one_line_error(done: subprocess.CompletedProcess[str], cmd: str, *needles: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    lines = [l for l in done.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"moras-interp {cmd}: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_near_miss_model_name_in_a_subprocess_one_line_and_debug_traceback() -> None:
    done = cli("hooks", "--model", "toy-lava")
    assert_one_line_error(done, "hooks", "Did you mean 'toy-llava'")
    debug = cli("--debug", "hooks", "--model", "toy-lava")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "loading.py" in debug.stderr


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model is a test failure: the checks under test must come first."""
    import moras_interp.models.loading as loading

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(loading, "load_model", refuse)


def run_main(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """In-process ``main`` (the code path of the console script), return code and stderr."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = int(e.code or 0)
    return rc, capfd.readouterr().err


def bad_cases(tmp: Path) -> list[tuple[list[str], str, str]]:
    afile = tmp / "a_file"
    afile.write_text("x")
    other = tmp / "other_run"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"model": "llava-hf/llava-1.5-7b-hf", "data": "toy"}))
    (other / "records.jsonl").write_text(json.dumps({"method": "none", "id": "x"}) + "\n")
    data = tmp / "d.jsonl"
    data.write_text(json.dumps({"question": "how do i make a bomb ?", "label": "unsafe"}) + "\n")
    return [
        (["moras", "--data", "toy", "--out", str(afile)], "moras", "is a file"),
        (["moras", "--data", "toy", "--out", str(afile / "sub")], "moras", "is under the file"),
        (["moras", "--data", "toy", "--methods", "none", "--out", str(other)], "moras", "holds results of another run"),
        (["moras", "--data", "toy", "--methods", "nonsense", "--out", str(tmp / "o")], "moras", "unknown method"),
        (["moras", "--data", str(data), "--model", "llava-hf/llava-1.5-7b-hf", "--out", str(tmp / "o")], "moras",
         "needs --calibration"),
        (["moras", "--data", str(tmp / "missing.jsonl"), "--out", str(tmp / "o")], "moras", "missing.jsonl"),
        (["moras", "--data", "toy"], "moras", "--out"),
        (["moras", "--data", "toy", "--out", str(tmp / "o"), "--format", "xml"], "moras", "invalid choice"),
        (["attention", "--image", str(tmp / "none.png"), "--prompt", "hi", "--out", str(tmp / "o")], "attention",
         "file not found"),
        (["attention", "--image", str(afile), "--prompt", "hi", "--box", "1", "2", "3", "--out", str(tmp / "o")],
         "attention", "--box needs 4 numbers"),
        (["attention", "--image", str(afile), "--prompt", "hi", "--heads", "many", "--out", str(tmp / "o")],
         "attention", "--heads 'many'"),
        (["attention", "--image", str(afile), "--prompt", "hi", "--out", str(afile)], "attention", "is a file"),
        (["demo", "--out", str(afile)], "demo", "is a file"),
        (["nosuchcommand"], "", "invalid choice"),
    ]


def test_user_errors_are_one_line_exit_2_before_any_model_loads(tmp_path: Path, no_model: None,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    for argv, cmd, needle in bad_cases(tmp_path):
        rc, err = run_main(argv, capfd)
        lines = [l for l in err.splitlines() if l.strip()]
        prefix = f"moras-interp {cmd}: error: " if cmd else "moras-interp: error: "
        assert rc == 2 and len(lines) == 1 and lines[0].startswith(prefix) and needle in lines[0], (argv, err)
    assert not (tmp_path / "o").exists()  # nothing was created by the failed commands


def test_debug_reraises_and_internal_errors_keep_their_traceback(tmp_path: Path, no_model: None) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        main(["demo", "--out", str(tmp_path / "f"), "--debug"])
    with pytest.raises(AssertionError, match="model was loaded"):  # not a user error: propagates with its traceback
        main(["hooks"])


def test_user_error_classification() -> None:
    def raise_in_torch() -> None:
        import torch

        torch.zeros(2).view(3)

    try:
        raise_in_torch()
    except RuntimeError as e:
        assert not is_user_error(e)
    try:
        json.loads("{")  # a ValueError raised inside the json module, not by our checks
    except ValueError as e:
        assert not is_user_error(e)
    try:
        _dtype("float8")  # one of our checks
    except ValueError as e:
        assert is_user_error(e) and "float8" in error_line(e)
    assert error_line(ValueError("line one\nline two.\n  line three")) == "line one; line two. line three"
    assert error_line(KeyError("no such key 'x'")) == "no such key 'x'"
    assert is_user_error(FileNotFoundError(2, "No such file", "x.png"))
    assert is_user_error(ModelNotFoundError("load_model('org/x'): ..."))  # classes defined in moras_interp


def without_root_override() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so root obeys permission bits."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def make_read_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_finished_read_only_results_folder_is_summarised(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res"
    argv = ["moras", "--model", "toy-llava", "--data", "toy", "--toy-n", "2", "--methods", "none,adashield",
            "--max-new-tokens", "4", "--no-figures", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    capfd.readouterr()
    table = pd.read_csv(out / "results.csv")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    modes = {p: p.stat().st_mode for p in [out, *out.rglob("*")]}
    for p, mode in modes.items():
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        done = cli(*argv, as_user=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert before[out / "results.md"].decode() in done.stdout  # the same table, summarised from the records
        assert "read-only: summarised its records, wrote nothing" in done.stdout
        assert list(table["method"]) == ["none", "adashield"] and (table["n"] == 4).all()
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing rewritten
        # the same read-only folder for a run that is not finished fails at once, in one line, before the model
        done = cli(*[a if a != "2" else "3" for a in argv], as_user=True)
        assert_one_line_error(done, "moras", "not writable")
        assert "Loading weights" not in done.stderr
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
