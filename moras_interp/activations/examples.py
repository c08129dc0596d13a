"""Datasets for activation collection: normalising examples and fingerprinting them.

A dataset is any iterable of examples. An example is a :class:`moras_interp.eval.datasets.Example` (or any
object with a ``text`` attribute and optional ``image``, ``label``, ``region``, ``id``), a mapping with the
keys of the JSONL/CSV loaders (``text``/``question``/``prompt``, ``image``/``image_path``, ``label``,
``region``/``box``, ``id``), or a plain string (a text-only prompt). ``image`` is a PIL image, a path, a
list of them, or ``None`` for text-only. Use :func:`moras_interp.eval.datasets.load_jsonl` /
:func:`~moras_interp.eval.datasets.load_csv` to read files of that shape.

The fingerprint hashes, in order, every example's text, label, region and image *content* (the file's
bytes for a path, mode + size + pixels for a PIL image), so a store can tell that a resumed run sees the
same data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from moras_interp.activations.store import dataset_fingerprint
from moras_interp.models.batch import load_image

ImageLike = Image.Image | str | Path

_TEXT_KEYS = ("text", "question", "prompt")
_IMAGE_KEYS = ("image", "image_path")
_REGION_KEYS = ("region", "box")


@dataclass
class CollectExample:
    """One normalised example: ``images`` is empty for text-only; ``index`` is its position in the dataset."""

    index: int
    text: str
    images: list[ImageLike] = field(default_factory=list)
    label: str | None = None
    region: tuple[float, ...] | None = None
    id: str | None = None

    def describe(self) -> str:
        """A short human-readable reference for error messages."""
        short = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        ident = f", id {self.id!r}" if self.id is not None and self.id != str(self.index) else ""
        kind = f"{len(self.images)} image(s)" if self.images else "text-only"
        return f"example {self.index}{ident} ({kind}, text {short!r})"

    def load_images(self) -> list[Image.Image]:
        """The images as RGB PIL images (paths are opened now)."""
        try:
            return [load_image(im) for im in self.images]
        except (FileNotFoundError, OSError) as e:
            raise FileNotFoundError(f"{self.describe()}: cannot open its image: {e}") from e


def _first(get: Any, keys: Sequence[str]) -> Any:
    for k in keys:
        v = get(k)
        if v is not None and not (isinstance(v, str) and not v.strip()):
            return v
    return None


def _as_images(value: Any, where: str) -> list[ImageLike]:
    if value is None:
        return []
    items = [value] if isinstance(value, (Image.Image, str, Path)) else list(value)
    for im in items:
        if not isinstance(im, (Image.Image, str, Path)):
            raise TypeError(f"{where}: image must be a PIL image, a path, a list of them or None, "
                            f"got {type(im).__name__}.")
    return items


def normalise_example(item: Any, index: int) -> CollectExample:
    """Turn one dataset item (Example-like object, mapping or string) into a :class:`CollectExample`."""
    where = f"dataset item {index}"
    if isinstance(item, str):
        return CollectExample(index, item, id=str(index))
    if isinstance(item, Mapping):
        get = item.get
    elif hasattr(item, "text"):
        def get(k: str) -> Any:
            return getattr(item, k, None)
    else:
        raise TypeError(f"{where}: expected an Example, a mapping with a 'text' key or a string, "
                        f"got {type(item).__name__}.")
    text = _first(get, _TEXT_KEYS)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: no text (expected a non-empty string under one of {list(_TEXT_KEYS)}).")
    label = get("label")
    region = _first(get, _REGION_KEYS)
    rid = get("id")
    return CollectExample(index, text, _as_images(_first(get, _IMAGE_KEYS), where),
                          None if label is None or label == "" else str(label),
                          None if region is None else tuple(float(v) for v in region),
                          str(index) if rid is None or rid == "" else str(rid))


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
