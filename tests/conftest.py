"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from moras_interp.models.loading import load_model
from moras_interp.models.mllm import MLLM
from moras_interp.models.tiny import build_tiny


@pytest.fixture(scope="module")
def models() -> Iterator[Callable[..., MLLM]]:
    """Builds each tiny model once per test module: ``models(arch, attn="eager")``."""
    cache: dict[tuple[str, str], MLLM] = {}

    def get(arch: str, attn: str = "eager") -> MLLM:
        if (arch, attn) not in cache:
            hf, proc = build_tiny(arch, attn_implementation=attn)
            cache[(arch, attn)] = load_model(hf, processor=proc, attn_implementation=attn)
        return cache[(arch, attn)]

    yield get
    cache.clear()
