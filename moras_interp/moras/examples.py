"""Evaluation / calibration examples for the MoRAS runner: user files in any supported format, or a named
data source registered by a package above this one (the organism registers ``"toy"``, its held-out generator).

Every example is a :class:`moras_interp.eval.datasets.Example`; :func:`safety_label` and :func:`gold_answer`
(the one label rule, :mod:`moras_interp.eval.labels`) read the two things the runner needs from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from moras_interp.eval.benchmark_files import load_figstep, load_mm_safetybench, load_xstest
from moras_interp.eval.datasets import Example, load_csv, load_jsonl
from moras_interp.eval.labels import GOLD_KEYS, describe, gold_answer, safety_label

FORMATS: tuple[str, ...] = ("jsonl", "csv", "figstep", "mm-safetybench", "xstest")
"""File formats :func:`load_examples` understands (``"auto"`` picks by extension: .jsonl, .csv, .json)."""

DataSource = Callable[..., list[Example]]
"""``fn(n, *, seed, split) -> list[Example]``: at most ``n`` examples per class, drawn from stream ``split``."""

DATA_SOURCES: dict[str, DataSource] = {}
"""Named data sources for ``load_examples(name)`` / ``--data name``; filled by the packages that own them
(``moras_interp.organisms`` registers ``"toy"`` on import, and ``import moras_interp`` imports it)."""


def register_data_source(name: str, source: DataSource) -> None:
    """Make ``load_examples(name)`` call ``source(n, seed=, split=)`` (re-registering a name replaces it)."""
    if not name or Path(name).suffix:
        raise ValueError(f"A data source name must be a plain word, not {name!r} (it would shadow a file).")
    DATA_SOURCES[name] = source


def _fmt(path: Path, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ValueError(f"Unknown data format {fmt!r}; use one of {', '.join(FORMATS)} or 'auto'.")
        return fmt
    by_ext = {".jsonl": "jsonl", ".csv": "csv", ".json": "mm-safetybench"}
    if path.suffix.lower() not in by_ext:
        raise ValueError(f"Cannot tell the format of {path} from its extension; pass --format "
                         f"({', '.join(FORMATS)}).")
    return by_ext[path.suffix.lower()]


def load_examples(data: str | Path, *, fmt: str = "auto", image_root: str | Path | None = None,
                  limit: int | None = None, seed: int = 0, toy_n: int = 20, split: str = "eval") -> list[Example]:
    """Examples from ``data``: a file path, or a registered data source (:data:`DATA_SOURCES`; ``"toy"`` is the
    organism's held-out set, ``toy_n`` per class from stream ``split`` with ``seed``).

    Formats: generic ``jsonl`` / ``csv`` (columns text|question|prompt, image, label, id, …), ``figstep``
    (SafeBench CSV; images under ``image_root``), ``mm-safetybench`` (one scenario JSON; images under
    ``image_root``), ``xstest`` (CSV, text only). ``limit`` keeps the first ``limit`` examples.
    Ids are made unique (a duplicate id gets ``#k`` appended) so results can be resumed per example.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be ≥ 1, got {limit}.")
    if str(data) in DATA_SOURCES:
        n = toy_n if limit is None else min(toy_n, (limit + 1) // 2)
        exs = DATA_SOURCES[str(data)](n, seed=seed, split=split)
    else:
        path = Path(data).expanduser()
        if not path.is_file():
            names = " or ".join(repr(k) for k in sorted(DATA_SOURCES)) or "a registered data source"
            raise FileNotFoundError(f"Data file not found: {path}. Pass a .jsonl/.csv/.json file or {names}.")
        kind = _fmt(path, fmt)
        if kind in ("figstep", "mm-safetybench") and image_root is None:
            raise ValueError(f"--format {kind} needs --image-root (the folder holding the benchmark's images).")
        if kind == "jsonl":
            exs = load_jsonl(path, image_root)
        elif kind == "csv":
            exs = load_csv(path, image_root)
        elif kind == "figstep":
            exs = load_figstep(path, image_root)  # type: ignore[arg-type]
        elif kind == "mm-safetybench":
            exs = load_mm_safetybench(path, image_root)
        else:
            exs = load_xstest(path)
    exs = exs[:limit] if limit is not None else exs
    if not exs:
        raise ValueError(f"No examples in {data}.")
    seen: dict[str, int] = {}
    for i, ex in enumerate(exs):
        base = ex.id if ex.id is not None else str(i)
        k = seen.get(base, 0)
        seen[base] = k + 1
        ex.id = base if k == 0 else f"{base}#{k}"
    return exs


__all__ = ["DATA_SOURCES", "FORMATS", "GOLD_KEYS", "DataSource", "gold_answer", "load_examples",
           "register_data_source", "safety_label"]


def unpack_examples(items: Sequence[Any], *, labels: bool = True) -> tuple[list[Any], list[str], list[bool]]:
    """(images, questions, is_unsafe) from (image, question, label) tuples or objects with .image/.text/.label.

    Labels follow the one label rule (:func:`moras_interp.eval.labels.safety_label`: "unsafe"/"harmful"/1/True,
    "safe"/"benign"/0/False, case and spaces ignored; a utility example with a gold answer and no label is safe;
    anything else is an error naming the example). ``labels=False`` reads no labels (is_unsafe all False), for
    unlabelled data.
    """
    ims, qs, ys = [], [], []
    for i, it in enumerate(items):
        if isinstance(it, (tuple, list)):
            im, q, _ = it
        else:
            im = it.load_image() if hasattr(it, "load_image") else it.image
            q = getattr(it, "text", None) or it.question
        ims.append(im)
        qs.append(q)
        ys.append(safety_label(it, where=describe(it, i)) == "unsafe" if labels else False)
    return ims, qs, ys
