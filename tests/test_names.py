"""Model names: the registry, tiny:<arch> from Python, did-you-mean without the network, missing local paths."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moras_interp import load_model
from moras_interp.models import registry
from moras_interp.models.loading import ModelNotFoundError
from moras_interp.models.tiny import TINY_ARCHS, build_tiny, tiny_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub is never asked: HF_HUB_OFFLINE unset, from_pretrained and sockets fail loudly if used."""
    import socket

    from transformers import AutoModelForImageTextToText

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network / from_pretrained used: {args}")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_registry_holds_the_organism_and_every_tiny_arch() -> None:
    assert set(registry.names()) == {"toy-llava", "toy-llava-2", *(f"tiny:{a}" for a in TINY_ARCHS)}
    assert registry.resolve("toy-llava") == ROOT / "moras_interp" / "organisms" / "weights" / "toy-llava"
    assert registry.resolve("toy-llava-2") == ROOT / "moras_interp" / "organisms" / "weights" / "toy-llava-2"
    with pytest.raises(KeyError, match="Did you mean 'toy-llava'"):
        registry.resolve("toy-lama")


def test_importing_the_model_layer_alone_registers_the_names() -> None:
    code = ("import moras_interp.models.loading, sys; from moras_interp.models import registry; "
            "print(','.join(registry.names())); print('organisms' in sys.modules['moras_interp.models.loading'].__dict__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    names, upward = done.stdout.split()
    assert "toy-llava" in names.split(",") and "tiny:llava" in names.split(",") and upward == "False"


def test_the_model_layer_never_imports_organisms() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "moras_interp" / "models").rglob("*.py")
                 if "moras_interp.organisms" in p.read_text(encoding="utf-8")]
    assert offenders == []


@pytest.mark.parametrize(("name", "expected"), [("toy-lava", "toy-llava"), ("Toy-Llava", "toy-llava"),
                                                ("toy_llava", "toy-llava"), ("tiny:lava", "tiny:llava"),
                                                ("tiny:qwen2vl", "tiny:qwen2_vl")])
def test_near_miss_names_say_did_you_mean_at_once(no_hub: None, name: str, expected: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"Did you mean '{expected}'") as err:
        load_model(name)
    assert time.perf_counter() - t0 < 2.0
    assert repr(name) in str(err.value)


def test_unknown_prefixed_name_lists_the_registered_names(no_hub: None) -> None:
    with pytest.raises(ValueError, match="unknown model name") as err:
        load_model("tiny:bert")
    assert all(f"tiny:{a}" in str(err.value) for a in TINY_ARCHS)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_tiny_name_from_python_is_the_tiny_model(arch: str) -> None:
    model = load_model(f"tiny:{arch}", validate=False)
    assert model.model_id == f"tiny:{arch}" and model.attn_implementation == "eager"
    ref_hf, _ = build_tiny(arch)  # independent build, plain HF forward
    batch = model.prepare([tiny_image()], ["what is in the image ?"])
    with torch.no_grad():
        ref = ref_hf(**batch.inputs).logits
    torch.testing.assert_close(model.forward(batch), ref, atol=0, rtol=0)
    assert load_model(f"tiny:{arch}", attn_implementation="sdpa", validate=False).attn_implementation == "sdpa"


def test_registered_name_resolving_to_a_folder(models, tmp_path: Path) -> None:
    ref = models("llava")
    ref.hf.save_pretrained(tmp_path / "mine")
    ref.processor.save_pretrained(tmp_path / "mine")
    registry.register_model("my-model", lambda **_: tmp_path / "mine")
    try:
        model = load_model("my-model", validate=False)
        assert model.model_id == "my-model"
        batch = ref.prepare([tiny_image()], ["what is in the image ?"])
        torch.testing.assert_close(model.forward(batch), ref.forward(batch), atol=0, rtol=0)
    finally:
        registry._REGISTRY.pop("my-model")


def test_missing_local_paths_say_no_such_directory_with_siblings(no_hub: None, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ckpts" / "llava-7b").mkdir(parents=True)
    cases = {str(tmp_path / "ckpts" / "llava-7c"): ("'llava-7c'", str(tmp_path / "ckpts" / "llava-7b")),
             str(tmp_path / "ckpt" / "llava-7b"): ("'ckpt'", str(tmp_path / "ckpts"))}
    for name, (missing, suggestion) in cases.items():
        with pytest.raises(FileNotFoundError, match="no such directory") as err:
            load_model(name)
        assert missing in str(err.value) and f"Did you mean {suggestion!r}" in str(err.value), str(err.value)
    monkeypatch.chdir(tmp_path)
    for name in ("./llava-7b", "ckpts/llava-7c", "~/surely-not-here-moras", "ckpts/a/b"):  # ckpts/ exists here
        with pytest.raises(FileNotFoundError, match="no such directory"):
            load_model(name)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_model("weights.safetensors")


def test_unknown_hub_id_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match="Hugging Face Hub could not provide it") as err:
        load_model("nobody-org/no-such-model-moras", local_files_only=True)  # real from_pretrained, no network
    assert "'nobody-org/no-such-model-moras'" in str(err.value) and "toy-llava" in str(err.value)
    assert isinstance(err.value, OSError) and isinstance(err.value.__cause__, OSError)


def test_an_unusable_device_is_a_clear_error_before_loading() -> None:
    import torch

    from moras_interp.models.loading import load_model

    with pytest.raises(ValueError, match="not a torch device"):
        load_model("toy-llava", device="gpu7")
    want = "only .* CUDA device" if torch.cuda.is_available() else "this torch build or machine has no CUDA GPU"
    with pytest.raises(ValueError, match=rf"device='cuda:99': {want}"):
        load_model("toy-llava", device="cuda:99")
