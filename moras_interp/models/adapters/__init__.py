"""Architecture adapters: one small module per family, registered here.

Adding an architecture: write ``adapters/<family>.py`` with a subclass of
:class:`~moras_interp.models.adapters.base.Adapter` (module paths + ``image_specs``), add it to
``ADAPTERS`` below, and add its tiny config to ``moras_interp/models/tiny.py`` so the test-suite checks it
against HF's own outputs (``docs/adding_an_architecture.md``).
"""

from __future__ import annotations

from typing import Any

import torch

from moras_interp.models.adapters.base import Adapter, GridSpec, ImageSpec
from moras_interp.models.adapters.gemma import Gemma3Adapter, PaliGemmaAdapter
from moras_interp.models.adapters.idefics3 import Idefics3Adapter
from moras_interp.models.adapters.internvl import InternVLAdapter
from moras_interp.models.adapters.llava import LlavaAdapter
from moras_interp.models.adapters.llava_next import LlavaNextAdapter
from moras_interp.models.adapters.qwen2_vl import Qwen2VLAdapter

ADAPTERS: list[type[Adapter]] = [LlavaAdapter, LlavaNextAdapter, Qwen2VLAdapter, Idefics3Adapter, Gemma3Adapter,
                                 InternVLAdapter, PaliGemmaAdapter]


def supported_architectures() -> dict[str, str]:
    """HF class name -> adapter name, for every supported architecture."""
    return {cls: a.name for a in ADAPTERS for cls in a.hf_classes}


def get_adapter(hf: torch.nn.Module, processor: Any) -> Adapter:
    """The adapter for ``hf``'s class; a clear error naming the supported classes otherwise."""
    cls = type(hf).__name__
    for a in ADAPTERS:
        if cls in a.hf_classes:
            return a(hf, processor)
    names = ", ".join(sorted(supported_architectures()))
    raise ValueError(
        f"Unsupported architecture {cls!r}. Supported: {names}. To add one, write a small adapter in "
        "moras_interp/models/adapters/ (module paths + image token geometry; see adapters/llava.py for a "
        "template), register it in moras_interp/models/adapters/__init__.py and extend the tests: "
        "docs/adding_an_architecture.md walks through it."
    )


__all__ = ["ADAPTERS", "Adapter", "GridSpec", "ImageSpec", "get_adapter", "supported_architectures"]
