"""Evaluation examples and loaders for user-supplied files (generic JSONL/CSV, FigStep, MM-SafetyBench, XSTest).

Nothing is downloaded: point a loader at the files you obtained from the benchmark's authors. Every
format error names the file and the missing column/key (:class:`DatasetFormatError`, a ``ValueError``).
Images are referenced by path and opened lazily by :meth:`Example.load_image`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from moras_interp.eval.labels import DatasetFormatError, parse_optional_label
from moras_interp.models.images import load_image, to_rgb
from moras_interp.readers import read_jsonl

__all__ = ["DatasetFormatError", "Example", "load_csv", "load_jsonl"]

BENCHMARK_FILE_FIX = "Check that it is the benchmark's original file."
"""The fix a JSON parse error of a benchmark file suggests (shared by the loaders in eval/)."""

TEXT_KEYS = ("text", "question", "prompt")
IMAGE_KEYS = ("image", "image_path")
REGION_KEYS = ("region", "box")
Region = tuple[float, float, float, float]


@dataclass
class Example:
    """One evaluation example.

    Attributes:
        text: the prompt given to the model.
        image: a PIL image, a path (opened lazily by :meth:`load_image`), ``None`` for text-only, or a list of
            images/paths for a multi-image prompt (activation collection).
        label: ``"unsafe"``, ``"safe"`` or ``None`` (no label). Any accepted spelling given here (``"Harmful "``,
            ``1``, ``True``…; see :mod:`moras_interp.eval.labels`) is normalised when the example is made, and
            anything else is a :class:`DatasetFormatError`. A utility set's gold answer goes in
            ``meta["answer"]``; with no label such an example counts as safe.
        region: a risky region (x0, y0, x1, y1) in original image pixels, for region-share analyses.
        meta: everything else the source file carried (original question, category, …).
        id: a stable identifier within the dataset.
    """

    text: str
    image: Image.Image | str | Path | list[Image.Image | str | Path] | None = None
    label: str | None = None
    region: Region | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def __post_init__(self) -> None:
        self.label = parse_optional_label(self.label, where=f"example {self.id!r}" if self.id is not None
                                          else f"example with text {self.text[:40]!r}")

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, where: str, default_id: str,
                    image_root: str | Path | None = None) -> Example:
        """An example from one JSONL object / CSV row / dict with the loader keys (see :func:`load_jsonl`);
        errors name ``where`` (e.g. ``"data.jsonl:3"``). PIL images (or lists of them) are kept as given."""
        return _from_record(record, where, default_id, image_root)

    def load_image(self) -> Image.Image | None:
        """The image as an RGB PIL image (opened from disk each call if ``image`` is a path), or ``None``."""
        if self.image is None:
            return None
        if isinstance(self.image, (list, tuple)):
            raise ValueError(f"Example {self.id!r} has {len(self.image)} images; a multi-image example is for "
                             "activation collection (moras_interp.activations), not for load_image().")
        if isinstance(self.image, Image.Image):
            return to_rgb(self.image, f"image of example {self.id!r}")
        path = Path(self.image)
        if not path.is_file():
            raise FileNotFoundError(f"Image for example {self.id!r} not found: {path}")
        return load_image(path)  # 16-bit scaled, transparency composited on white, with a warning


def _first(record: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for k in keys:
        v = record.get(k)
        if v is not None and not (isinstance(v, str) and not v.strip()):
            return v
    return None


def _resolve(image: Any, image_root: str | Path | None) -> Any:
    if image is None or isinstance(image, (Image.Image, list, tuple)):
        return image
    p = Path(str(image)).expanduser()
    return p if p.is_absolute() or image_root is None else Path(image_root) / p


def _parse_region(value: Any, where: str) -> Region | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s,;()\[\]]+", value) if v]
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{where}: region {value!r} is not four numbers (x0, y0, x1, y1).") from None
    if len(box) != 4:
        raise DatasetFormatError(f"{where}: region {value!r} has {len(box)} numbers, expected 4 (x0, y0, x1, y1).")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DatasetFormatError(f"{where}: region {box} is empty; expected x0 < x1 and y0 < y1.")
    return box  # type: ignore[return-value]


def _check_images(examples: list[Example], source: Path) -> None:
    missing = [str(e.image) for e in examples if isinstance(e.image, (str, Path)) and not Path(e.image).is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{source}: {len(missing)} of {len(examples)} images not found, e.g. "
                                f"{', '.join(missing[:3])}{more}. Check image_root / the file name pattern, "
                                "or pass check_images=False.")


def _from_record(record: Mapping[str, Any], where: str, default_id: str,
                 image_root: str | Path | None) -> Example:
    text = _first(record, TEXT_KEYS)
    if text is None:
        raise DatasetFormatError(f"{where}: no text; expected one of the keys/columns {list(TEXT_KEYS)}, "
                                 f"found {sorted(record)}.")
    label = parse_optional_label(record.get("label"), where=where)
    rid = record.get("id")
    used = {*TEXT_KEYS, *IMAGE_KEYS, *REGION_KEYS, "label", "id"}
    return Example(text=str(text), image=_resolve(_first(record, IMAGE_KEYS), image_root),
                   label=label,
                   region=_parse_region(_first(record, REGION_KEYS), where),
                   meta={k: v for k, v in record.items() if k not in used},
                   id=default_id if rid is None or rid == "" else str(rid))


def _require_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"Dataset file not found: {p}")
    return p


def load_jsonl(path: str | Path, image_root: str | Path | None = None, *,
               check_images: bool = True) -> list[Example]:
    """Generic JSON-lines loader: one object per line.

    Keys: text from ``text`` / ``question`` / ``prompt`` (first present; required); image path from
    ``image`` / ``image_path`` (relative paths are joined to ``image_root``); ``label`` (a safety label,
    normalised by :func:`moras_interp.eval.labels.parse_label`; a bad one is an error naming the line); region from
    ``region`` / ``box`` (four numbers); ``id`` (default: the 0-based line index among records). All other
    keys go to ``meta``. Blank lines are skipped. With ``check_images`` every referenced image must exist.
    """
    p = _require_file(path)
    out = [_from_record(record, f"{p}:{lineno}", str(i), image_root)
           for i, (lineno, record) in enumerate(read_jsonl(p, error=DatasetFormatError))]
    if check_images:
        _check_images(out, p)
    return out


def _read_csv(p: Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """Rows of a CSV with a header as dicts; a row with fewer or more cells than the header is an error
    (naming the file and line), never silently padded with ``None``. Fully empty rows are skipped."""
    with p.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        cols = [c.strip() for c in next(reader, [])]
        missing = [c for c in required if c not in cols]
        if missing:
            raise DatasetFormatError(f"{p}: missing column(s) {missing}; found {cols}.")
        rows, line = [], reader.line_num + 1
        for cells in reader:
            if cells and len(cells) != len(cols):
                raise DatasetFormatError(f"{p}:{line}: row has {len(cells)} cells but the header has {len(cols)} "
                                         f"({cols}); the row is truncated or has an unquoted comma.")
            if cells:
                rows.append(dict(zip(cols, cells)))
            line = reader.line_num + 1
        return rows


def load_csv(path: str | Path, image_root: str | Path | None = None, *, text_column: str | None = None,
             check_images: bool = True) -> list[Example]:
    """Generic CSV loader with a header row; same columns as :func:`load_jsonl`.

    ``text_column`` forces the text column (else the first of text / question / prompt). A ``region`` or
    ``box`` cell is parsed from ``"x0,y0,x1,y1"``, ``"[x0, y0, x1, y1]"`` or space-separated numbers.
    Empty cells count as absent; all values other than the region are kept as strings.
    """
    p = _require_file(path)
    rows = _read_csv(p, [text_column] if text_column else ())
    if rows and text_column is None and not any(k in rows[0] for k in TEXT_KEYS):
        raise DatasetFormatError(f"{p}: no text column; expected one of {list(TEXT_KEYS)} or pass text_column=, "
                                 f"found {list(rows[0])}.")
    out = []
    for i, row in enumerate(rows):
        rec: dict[str, Any] = {k: (None if v == "" else v) for k, v in row.items()}
        if text_column:
            rec["text"] = rec.pop(text_column)
        out.append(_from_record(rec, f"{p}:row {i + 2}", str(i), image_root))
    if check_images:
        _check_images(out, p)
    return out
