"""The one label rule: every reader of a safety label turns it into ``"unsafe"`` or ``"safe"`` here.

Dataset loaders, :class:`~moras_interp.eval.datasets.Example` itself, activation collection and
separability, MoRAS calibration and evaluation, the ablation evaluators and the organism's analyses all call
:func:`parse_label` / :func:`safety_label`, so one label means the same thing everywhere.

Accepted spellings (case-insensitive; surrounding whitespace is ignored, so ``"Unsafe "`` is unsafe):

=========  ==========================================  ======================
result     strings                                     other values
=========  ==========================================  ======================
unsafe     ``unsafe``, ``harmful``, ``1``, ``true``,   ``True``, ``1``, ``1.0``
           ``yes``
safe       ``safe``, ``benign``, ``harmless``, ``0``,  ``False``, ``0``, ``0.0``
           ``false``, ``no``
=========  ==========================================  ======================

Anything else (``"malicious"``, ``"unsfe"``, ``2``, ``"maybe"``, a list…) is a :class:`DatasetFormatError` that
names where it was found (``file:line`` for a file, the example id otherwise) and lists these spellings; it is
never read as safe. A missing label (``None``, an empty or blank string) is "no label".

Utility sets (questions the model should answer, scored against a gold answer): the gold answer goes under
one of :data:`GOLD_KEYS` in the example's ``meta`` (``"answer"`` in a JSONL/CSV file), never in ``label``. An
example with a gold answer and no label counts as **safe**; an example with neither has no safety label and
is an error wherever one is needed.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal

import numpy as np

from moras_interp.readers import ReadError

Label = Literal["unsafe", "safe"]

UNSAFE_SPELLINGS: tuple[str, ...] = ("unsafe", "harmful", "1", "true", "yes")
"""Strings read as ``"unsafe"`` (after lower-casing and stripping)."""
SAFE_SPELLINGS: tuple[str, ...] = ("safe", "benign", "harmless", "0", "false", "no")
"""Strings read as ``"safe"`` (after lower-casing and stripping)."""

GOLD_KEYS: tuple[str, ...] = ("gold", "answer", "answers", "gold_answer")
"""``Example.meta`` keys read as gold answers (a string or a list of acceptable strings)."""

ACCEPTED = (f"unsafe = {'/'.join(UNSAFE_SPELLINGS)} or True; safe = {'/'.join(SAFE_SPELLINGS)} or False "
            "(any case, surrounding spaces ignored)")


class DatasetFormatError(ReadError):
    """A data file or example does not have the expected layout (the message names the file/line or example)."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_label(value: Any, *, where: str) -> Label:
    """``"unsafe"`` or ``"safe"`` for an accepted spelling (see the module docstring), else a
    :class:`DatasetFormatError` naming ``where`` (e.g. ``"data.jsonl:12"`` or ``"example 'q7'"``)."""
    if isinstance(value, (bool, np.bool_)):
        return "unsafe" if bool(value) else "safe"
    if isinstance(value, numbers.Real) and value in (0, 1):  # also numpy / pandas integers
        return "unsafe" if value == 1 else "safe"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in UNSAFE_SPELLINGS:
            return "unsafe"
        if text in SAFE_SPELLINGS:
            return "safe"
    hint = " A gold answer of a utility set goes under 'answer', not 'label'." if isinstance(value, str) else ""
    what = "missing" if _missing(value) else repr(value)
    raise DatasetFormatError(f"{where}: label {what} is not a safety label; use {ACCEPTED}.{hint}")


def parse_optional_label(value: Any, *, where: str) -> Label | None:
    """:func:`parse_label`, but a missing label (None, empty or blank string) gives None."""
    return None if _missing(value) else parse_label(value, where=where)


def is_unsafe(value: Any, *, where: str) -> bool:
    """True for an unsafe label, False for a safe one (:func:`parse_label`)."""
    return parse_label(value, where=where) == "unsafe"


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def gold_answer(item: Any) -> str | list[str] | None:
    """The gold answer(s) of an example: ``meta["gold" | "answer" | "answers" | "gold_answer"]`` (first present)."""
    meta = _field(item, "meta") or {}
    for k in GOLD_KEYS:
        v = meta.get(k) if isinstance(meta, dict) else None
        if v is not None and v != "" and v != []:
            return [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v)
    return None


def describe(item: Any, index: int | None = None) -> str:
    """How an error names an example: ``example 'id'`` (or its position when it has no id)."""
    rid = _field(item, "id") if not isinstance(item, (tuple, list)) else None
    if rid is not None and rid != "":
        return f"example {str(rid)!r}"
    return f"example {index}" if index is not None else "example"


def safety_label(item: Any, *, where: str | None = None, required: bool = True) -> Label | None:
    """The safety label of one example: an :class:`~moras_interp.eval.datasets.Example`, any object or dict with
    ``label`` (and optionally ``meta`` / ``id``), or an ``(image, question, label)`` tuple.

    A present label goes through :func:`parse_label`; no label with a gold answer is ``"safe"`` (utility sets);
    no label and no gold answer is an error (or None with ``required=False``). ``where`` names the example in
    errors (default: its id).
    """
    where = where or describe(item)
    value = item[2] if isinstance(item, (tuple, list)) else _field(item, "label")
    if not _missing(value):
        return parse_label(value, where=where)
    if not isinstance(item, (tuple, list)) and gold_answer(item) is not None:
        return "safe"
    if not required:
        return None
    raise DatasetFormatError(f"{where} has no label: add 'label' ({ACCEPTED}), or a gold answer under 'answer' "
                             "for a utility example (counted as safe).")


__all__ = ["ACCEPTED", "GOLD_KEYS", "SAFE_SPELLINGS", "UNSAFE_SPELLINGS", "DatasetFormatError", "Label",
           "gold_answer", "is_unsafe", "parse_label", "parse_optional_label", "safety_label"]
