"""Evaluation / calibration examples for the MoRAS runner: user files in any supported format, or the organism's
held-out generator.

Every example is a :class:`moras_interp.eval.datasets.Example`; :func:`safety_label` and :func:`gold_answer`
read the two things the runner needs from it (``"safe"``/``"unsafe"``, and a gold answer when there is one).
"""

from __future__ import annotations

from pathlib import Path

from moras_interp.eval.datasets import (
    DatasetFormatError,
    Example,
    load_csv,
    load_figstep,
    load_jsonl,
    load_mm_safetybench,
    load_xstest,
)

FORMATS: tuple[str, ...] = ("jsonl", "csv", "figstep", "mm-safetybench", "xstest")
"""File formats :func:`load_examples` understands (``"auto"`` picks by extension: .jsonl, .csv, .json)."""

GOLD_KEYS: tuple[str, ...] = ("gold", "answer", "answers", "gold_answer")
"""``Example.meta`` keys read as gold answers (a string or a list of acceptable strings)."""


def toy_examples(n_unsafe: int = 20, n_safe: int = 20, seed: int = 0, split: str = "eval") -> list[Example]:
    """Held-out single-object scenes of the toy organism with a request about "the item in the image".

    Unsafe and safe examples alternate (so ``--limit`` keeps both classes); safe examples carry the object's
    name as gold answer (utility = the answer names the object). ``split`` selects the random stream
    ("eval" for evaluation, "calib" for calibration; they never share a scene).
    """
    from moras_interp.organisms import tasks

    unsafe = tasks.harmful_image_queries(n_unsafe, seed, split)
    safe = tasks.benign_image_queries(n_safe, seed, split)
    out: list[Example] = []
    for i in range(max(n_unsafe, n_safe)):
        for q, lab in ((unsafe, "unsafe"), (safe, "safe")):
            if i < len(q):
                meta = {"obj": q[i].obj, "caption": q[i].caption, "box": q[i].box, "source": f"toy-{split}-{seed}"}
                if lab == "safe":
                    meta["gold"] = q[i].obj
                out.append(Example(q[i].question, q[i].image, lab, q[i].box, meta, f"toy-{split}-{lab}-{i}"))
    return out


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
                  limit: int | None = None, seed: int = 0, toy_n: int = 20) -> list[Example]:
    """Examples from ``data``: a file path, or ``"toy"`` (the organism's held-out set, ``toy_n`` per class).

    Formats: generic ``jsonl`` / ``csv`` (columns text|question|prompt, image, label, id, …), ``figstep``
    (SafeBench CSV; images under ``image_root``), ``mm-safetybench`` (one scenario JSON; images under
    ``image_root``), ``xstest`` (CSV, text only). ``limit`` keeps the first ``limit`` examples.
    Ids are made unique (a duplicate id gets ``#k`` appended) so results can be resumed per example.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be ≥ 1, got {limit}.")
    if str(data) == "toy":
        n = toy_n if limit is None else min(toy_n, (limit + 1) // 2)
        exs = toy_examples(n, n, seed)
    else:
        path = Path(data).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Data file not found: {path}. Pass a .jsonl/.csv/.json file or 'toy'.")
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


def gold_answer(ex: Example) -> str | list[str] | None:
    """The gold answer(s) of ``ex``: ``meta["gold"|"answer"|…]``, or a label that is neither safe nor unsafe."""
    for k in GOLD_KEYS:
        v = ex.meta.get(k)
        if v is not None and v != "" and v != []:
            return [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v)
    lab = (ex.label or "").strip()
    return lab if lab and lab.lower() not in ("safe", "unsafe") else None


def safety_label(ex: Example) -> str:
    """"unsafe" or "safe"; a utility example (label = gold answer) counts as safe. Raises without any label."""
    lab = (ex.label or "").strip().lower()
    if lab in ("safe", "unsafe"):
        return lab
    if lab or gold_answer(ex) is not None:
        return "safe"
    raise DatasetFormatError(f"Example {ex.id!r} has no label: add 'label': 'safe' or 'unsafe' (or a gold answer "
                             "in 'answer') to the data file.")


__all__ = ["FORMATS", "GOLD_KEYS", "gold_answer", "load_examples", "safety_label", "toy_examples"]
