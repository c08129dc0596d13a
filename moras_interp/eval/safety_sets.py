"""Whole-benchmark safety loaders: every MM-SafetyBench scenario × image type in one call, and the VLSafe
calibration pairs the MoRAS authors fit (x0, k) on.

Both build :class:`~moras_interp.eval.datasets.Example` records; single files are read by the loaders in
:mod:`moras_interp.eval.datasets`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from moras_interp.eval.benchmark_files import MMSB_IMAGE_TYPES, load_mm_safetybench
from moras_interp.eval.datasets import BENCHMARK_FILE_FIX, DatasetFormatError, Example, _check_images
from moras_interp.readers import read_json, read_jsonl

__all__ = ["MMSB_SCENARIOS", "VLSAFE_POOL", "load_mm_safetybench_all", "mmsb_tiny_ids", "read_vlsafe_jsonl",
           "vlsafe_calibration", "vlsafe_indices"]

#: The 13 MM-SafetyBench scenarios, spelt as in the official release (note ``Activitiy``).
MMSB_SCENARIOS: tuple[str, ...] = (
    "01-Illegal_Activitiy", "02-HateSpeech", "03-Malware_Generation", "04-Physical_Harm", "05-EconomicHarm",
    "06-Fraud", "07-Sex", "08-Political_Lobbying", "09-Privacy_Violence", "10-Legal_Opinion",
    "11-Financial_Advice", "12-Health_Consultation", "13-Gov_Decision")
_SPELLINGS = {"01-Illegal_Activitiy": ("01-Illegal_Activitiy", "01-Illegal_Activity")}
"""Names a scenario's file / folder may have: the MoRAS code renames the first one ``01-Illegal_Activity``."""

#: The authors draw calibration indices from ``np.arange(3000)`` whatever the file length.
VLSAFE_POOL = 3000


def _spellings(scenario: str) -> tuple[str, ...]:
    return _SPELLINGS.get(scenario, (scenario,))


def _canonical(scenario: str) -> str:
    for canon, names in _SPELLINGS.items():
        if scenario in names:
            return canon
    if scenario not in MMSB_SCENARIOS:
        raise ValueError(f"Unknown MM-SafetyBench scenario {scenario!r}; scenarios: {', '.join(MMSB_SCENARIOS)}.")
    return scenario


def mmsb_tiny_ids(path: str | Path) -> dict[str, set[str]]:
    """MM-SafetyBench's ``TinyVersion_ID_List.json`` (``[{"Scenario": ..., "Sampled_ID_List": [5, 7, ...]}]``,
    168 questions) as ``{canonical scenario: {question key, ...}}``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"MM-SafetyBench tiny id list not found: {p}")
    data = read_json(p, expect=None, what="an MM-SafetyBench id list", error=DatasetFormatError,
                     fix=BENCHMARK_FILE_FIX)
    if not isinstance(data, list):
        raise DatasetFormatError(f"{p}: expected a list of {{'Scenario', 'Sampled_ID_List'}} objects.")
    out: dict[str, set[str]] = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "Scenario" not in item or not isinstance(item.get("Sampled_ID_List"), list):
            raise DatasetFormatError(f"{p}: item {i} needs 'Scenario' and a list 'Sampled_ID_List', got {item!r}.")
        out[_canonical(str(item["Scenario"]))] = {str(k) for k in item["Sampled_ID_List"]}
    return out


def _first_existing(folder: Path, names: Iterable[str], suffix: str = "") -> Path | None:
    return next((folder / (n + suffix) for n in names if (folder / (n + suffix)).exists()), None)


def load_mm_safetybench_all(questions_dir: str | Path, image_root: str | Path | None,
                            image_types: Sequence[str | None] = ("SD_TYPO",), *,
                            scenarios: Sequence[str] | None = None, ids: Mapping[str, Iterable[str]] | None = None,
                            check_images: bool = True) -> list[Example]:
    """Every chosen scenario × image type of MM-SafetyBench in one list (scenario-major, then image type, then
    the file's key order).

    Args:
        questions_dir: the ``processed_questions/`` folder (``01-Illegal_Activitiy.json`` ... ``13-Gov_Decision.json``;
            the MoRAS spelling ``01-Illegal_Activity`` is accepted too).
        image_root: the release's ``imgs/`` folder holding ``{scenario}/{SD,TYPO,SD_TYPO}/{key}.jpg`` (either
            spelling of the scenario folder); unused when every image type is ``None``.
        image_types: any of ``"SD"`` (text ``Rephrased Question(SD)``), ``"TYPO"`` / ``"SD_TYPO"`` (``Rephrased
            Question``; the MoRAS authors evaluate SD_TYPO), or ``None`` (the original ``Question``, no image).
        scenarios: a subset (default all 13). ids: keep only these question keys per scenario (e.g.
            :func:`mmsb_tiny_ids`).

    Keys are kept as they are (not contiguous in 05 and 08: images are named by key). ``id`` =
    ``"{scenario}/{image type or 'text'}/{key}"`` and ``meta["scenario"]`` use the official spelling. Missing
    images are reported once for the whole set.
    """
    qdir = Path(questions_dir).expanduser()
    if not qdir.is_dir():
        raise FileNotFoundError(f"MM-SafetyBench questions folder not found: {qdir}")
    types = list(image_types)
    bad = [t for t in types if t is not None and t not in MMSB_IMAGE_TYPES]
    if bad or not types or len(set(types)) != len(types):
        raise ValueError(f"image_types must be distinct values of {list(MMSB_IMAGE_TYPES)} or None, got {types!r}.")
    if any(t is not None for t in types) and image_root is None:
        raise ValueError("image_root (the folder with {scenario}/{SD,TYPO,SD_TYPO}/) is required unless every "
                         "image type is None (text-only).")
    keep = {_canonical(k): {str(x) for x in v} for k, v in (ids or {}).items()}
    out: list[Example] = []
    for scen in [_canonical(s) for s in (scenarios or MMSB_SCENARIOS)]:
        qfile = _first_existing(qdir, _spellings(scen), ".json")
        if qfile is None:
            raise FileNotFoundError(f"{qdir}: no question file for scenario {scen} (tried "
                                    f"{', '.join(n + '.json' for n in _spellings(scen))}).")
        folder = scen
        if image_root is not None:
            found = _first_existing(Path(image_root), _spellings(scen))
            folder = found.name if found is not None else scen
        for it in types:
            exs = load_mm_safetybench(qfile, image_root, it, image_pattern="{scenario}/{image_type}/{id}.jpg",
                                      scenario=folder, check_images=False)
            for ex in exs:
                key = ex.id.rsplit("/", 1)[1]  # type: ignore[union-attr]
                if scen in keep and key not in keep[scen]:
                    continue
                ex.id = f"{scen}/{it or 'text'}/{key}"
                ex.meta["scenario"], ex.meta["key"] = scen, key
                out.append(ex)
        missing = keep.get(scen, set()) - {e.meta["key"] for e in out if e.meta["scenario"] == scen}
        if missing:
            raise DatasetFormatError(f"{qfile}: id list asks for key(s) {sorted(missing)[:5]} the file lacks.")
    if check_images:
        _check_images(out, qdir)
    return out


def read_vlsafe_jsonl(path: str | Path, image_root: str | Path) -> list[tuple[str, Path]]:
    """(text, image path) per line of a VLSafe-style JSONL, read as the authors' ``get_unified_examine_data``
    does: text = ``query``, else ``safe_query``; image = ``image_id``, else ``image_pth``, joined to
    ``image_root``. Every line is one record (a record's index is its 0-based line number), so a blank or
    broken line inside the file is an error naming the line; trailing blank lines are ignored."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"VLSafe file not found: {p}")
    out = []
    for i, (lineno, rec) in enumerate(read_jsonl(p, error=DatasetFormatError)):
        where = f"{p}:{lineno}"
        if lineno != i + 1:
            raise DatasetFormatError(f"{p}:{i + 1}: blank line inside the file; every line must be one record "
                                     "(the authors index records by line number).")
        text = rec.get("query") if rec.get("query") is not None else rec.get("safe_query")
        img = rec.get("image_id") if rec.get("image_id") is not None else rec.get("image_pth")
        if not text or not img:
            raise DatasetFormatError(f"{where}: needs 'query' (or 'safe_query') and 'image_id' (or 'image_pth'); "
                                     f"found {sorted(rec)}.")
        out.append((str(text), Path(image_root) / str(img)))
    return out


def vlsafe_indices(n: int = 50, seed: int = 0, pool: int = VLSAFE_POOL) -> list[int]:
    """The authors' draw: ``np.random.seed(seed); np.random.choice(np.arange(pool), size=n, replace=False)``
    (NumPy's legacy generator, stable across NumPy versions), in draw order."""
    if not 1 <= n <= pool:
        raise ValueError(f"n must be in [1, pool={pool}], got {n}.")
    return [int(i) for i in np.random.RandomState(seed).choice(np.arange(pool), size=n, replace=False)]


def vlsafe_calibration(unsafe_file: str | Path, safe_file: str | Path, image_root: str | Path, n: int = 50,
                       seed: int = 0, *, pool: int = VLSAFE_POOL, check_images: bool = True) -> list[Example]:
    """The MoRAS calibration set: ``n`` unsafe + ``n`` safe VLSafe pairs at the authors' seed-``seed`` indices.

    Reproduces snumprlab/moras ``LLaVA/parameters/get_baseline_cossim.py``: unsafe pairs from VLSafe's
    ``train/VLSafe_harmlessnss_alignment.jsonl`` (their spelling; we could not check the name in VLSafe's own
    release, and the suite accepts ``..._harmlessness_...`` too), safe pairs from ``train/vlsafe_convert_safe.jsonl`` (the authors'
    own safe rewrite of the same queries, fields ``safe_query`` / ``image_pth``; not published with their code —
    users bring it), images from ``VLSafe/images``. ONE index draw (:func:`vlsafe_indices`) selects the same
    line numbers in both files. Their fit then takes x0 = mean similarity over all 2n pairs and
    k = ln 99 / (1 − x0) (``Calibration.fit(method="official")``).

    Returns the unsafe examples (label ``"unsafe"``, id ``vlsafe-unsafe/{index}``) in draw order, then the
    safe ones (``"safe"``, ``vlsafe-safe/{index}``); ``meta`` has the source file and line index.
    """
    idx = vlsafe_indices(n, seed, pool)
    out: list[Example] = []
    for path, label in ((unsafe_file, "unsafe"), (safe_file, "safe")):
        rows = read_vlsafe_jsonl(path, image_root)
        if max(idx) >= len(rows):
            raise DatasetFormatError(f"{path}: {len(rows)} records, but the seed-{seed} draw from range({pool}) "
                                     f"needs index {max(idx)}; is this the full file?")
        for i in idx:
            text, image = rows[i]
            out.append(Example(text=text, image=image, label=label, id=f"vlsafe-{label}/{i}",
                               meta={"source": str(path), "index": i, "benchmark": "vlsafe"}))
    if check_images:
        _check_images(out, Path(unsafe_file))
    return out
