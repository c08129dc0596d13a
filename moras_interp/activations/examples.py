"""Datasets for activation collection: normalising examples and fingerprinting them.

A dataset is any iterable of examples. Every item becomes the project's one record,
:class:`moras_interp.eval.datasets.Example`: an ``Example`` is used as is; a mapping with the keys of the
JSONL/CSV loaders (``text``/``question``/``prompt``, ``image``/``image_path``, ``label``, ``region``/``box``,
``id``), an object with those attributes (e.g. the organism's queries), an ``(image, question, label)`` tuple
or a plain string (a text-only prompt) is converted. ``image`` is a PIL image, a path, a list of them, or
``None`` for text-only. Labels follow the one label rule (:mod:`moras_interp.eval.labels`): ``"Unsafe "``,
``"harmful"``, ``1`` and ``True`` are all stored as ``"unsafe"``, and an unknown label is an error naming the
item. Use :func:`moras_interp.eval.datasets.load_jsonl` / :func:`~moras_interp.eval.datasets.load_csv` to read
files of that shape.

The fingerprint hashes, in order, every example's text, label, region and image *content* (the file's
bytes for a path, mode + size + pixels for a PIL image), so a store can tell that a resumed run sees the
same data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from moras_interp.activations.store import dataset_fingerprint
from moras_interp.eval.datasets import Example
from moras_interp.models.images import load_image

ImageLike = Image.Image | str | Path

_FIELDS = ("text", "question", "prompt", "image", "image_path", "label", "region", "box", "id")


@dataclass
class CollectExample:
    """The collector's view of one :class:`~moras_interp.eval.datasets.Example`: its position ``index`` in the
    dataset, its images as a list (empty for text-only) and an id (the index when the example has none)."""

    index: int
    example: Example

    @property
    def text(self) -> str:
        return self.example.text

    @property
    def label(self) -> str | None:
        """``"unsafe"``, ``"safe"`` or None (normalised by the one label rule when the Example was made)."""
        return self.example.label

    @property
    def id(self) -> str:
        return str(self.index) if self.example.id is None or self.example.id == "" else str(self.example.id)

    @property
    def region(self) -> tuple[float, ...] | None:
        r = self.example.region
        return None if r is None else tuple(float(v) for v in r)

    @property
    def images(self) -> list[ImageLike]:
        im = self.example.image
        return [] if im is None else list(im) if isinstance(im, (list, tuple)) else [im]

    def describe(self) -> str:
        """A short human-readable reference for error messages."""
        short = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        ident = f", id {self.id!r}" if self.id != str(self.index) else ""
        kind = f"{len(self.images)} image(s)" if self.images else "text-only"
        return f"example {self.index}{ident} ({kind}, text {short!r})"

    def load_images(self) -> list[Image.Image]:
        """The images as RGB PIL images (paths are opened now)."""
        try:
            return [load_image(im) for im in self.images]
        except (FileNotFoundError, OSError) as e:
            raise FileNotFoundError(f"{self.describe()}: cannot open its image: {e}") from e


def _check_images(ex: Example, where: str) -> None:
    im = ex.image
    for x in [] if im is None else im if isinstance(im, (list, tuple)) else [im]:
        if not isinstance(x, (Image.Image, str, Path)):
            raise TypeError(f"{where}: image must be a PIL image, a path, a list of them or None, "
                            f"got {type(x).__name__}.")


def as_example(item: Any, index: int) -> Example:
    """One dataset item as an :class:`~moras_interp.eval.datasets.Example` (see the module docstring);
    errors name ``dataset item {index}``."""
    where = f"dataset item {index}"
    if isinstance(item, Example):  # a label edited after construction is checked again by replace()
        ex = item if item.label in (None, "unsafe", "safe") else replace(item, id=item.id or str(index))
    elif isinstance(item, str):
        ex = Example(item, id=str(index))
    elif isinstance(item, tuple) and len(item) == 3:
        image, question, label = item
        ex = Example.from_record({"text": question, "image": image, "label": label}, where=where,
                                 default_id=str(index))
    elif isinstance(item, Mapping):
        ex = Example.from_record(item, where=where, default_id=str(index))
    elif hasattr(item, "text") or hasattr(item, "question"):
        record = {k: v for k in _FIELDS if (v := getattr(item, k, None)) is not None}
        ex = Example.from_record(record, where=where, default_id=str(index))
        ex.meta = dict(getattr(item, "meta", None) or {})
    else:
        raise TypeError(f"{where}: expected an Example, a mapping with a 'text' key, an (image, question, label) "
                        f"tuple or a string, got {type(item).__name__}.")
    if not isinstance(ex.text, str) or not ex.text.strip():
        raise ValueError(f"{where}: no text (expected a non-empty string under one of text/question/prompt).")
    _check_images(ex, where)
    return ex


def normalise_example(item: Any, index: int) -> CollectExample:
    """One dataset item as the collector's view of its :class:`~moras_interp.eval.datasets.Example`."""
    return CollectExample(index, as_example(item, index))


def normalise_dataset(dataset: Iterable[Any]) -> list[CollectExample]:
    """All examples of ``dataset``, normalised (images stay lazy paths where paths were given)."""
    if isinstance(dataset, (str, bytes, Mapping)):
        raise TypeError("dataset must be an iterable of examples (e.g. a list of Example or of dicts), "
                        f"not a single {type(dataset).__name__}.")
    out = [normalise_example(item, i) for i, item in enumerate(dataset)]
    if not out:
        raise ValueError("the dataset is empty: nothing to collect.")
    return out


def _image_bytes(im: ImageLike, ex: CollectExample) -> bytes:
    if isinstance(im, Image.Image):
        return f"PIL:{im.mode}:{im.size[0]}x{im.size[1]}:".encode() + im.tobytes()
    p = Path(im)
    if not p.is_file():
        raise FileNotFoundError(f"{ex.describe()}: image file not found: {p}")
    return p.read_bytes()


def _fingerprint_items(examples: Sequence[CollectExample]) -> Iterator[str | bytes]:
    for ex in examples:
        yield json.dumps({"text": ex.text, "label": ex.label, "region": ex.region, "n_images": len(ex.images)},
                         sort_keys=True)
        for im in ex.images:
            yield _image_bytes(im, ex)


def examples_fingerprint(examples: Sequence[CollectExample]) -> str:
    """sha256 (hex) over every example's text, label, region and image content, in dataset order."""
    return dataset_fingerprint(_fingerprint_items(examples))


def label_names(examples: Sequence[CollectExample]) -> list[str]:
    """The distinct labels in sorted order (the store keeps label ``i`` as integer ``i``, unlabeled as -1)."""
    return sorted({ex.label for ex in examples if ex.label is not None})
