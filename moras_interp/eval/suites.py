"""The MoRAS paper's evaluation suite by name: ``load_suite("figstep", root=...)`` and friends.

Each :class:`Suite` says which files the user brings (relative to ``root``, the folder they downloaded or
cloned), where to get them, how text and image are paired, and how it is scored. Nothing is downloaded.
``moras-interp suite --list`` prints the same table; docs/evaluation.md explains each suite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from moras_interp.eval import utility as U
from moras_interp.eval.benchmark_files import load_figstep, load_xstest
from moras_interp.eval.datasets import Example, load_csv, load_jsonl
from moras_interp.eval.safety_sets import load_mm_safetybench_all, mmsb_tiny_ids, vlsafe_calibration

__all__ = ["SUITES", "Suite", "load_suite", "score_suite", "suite_table"]

Loader = Callable[[Path, "Path | None", "tuple[str | None, ...] | None", bool], list[Example]]
Scorer = Callable[[Sequence[Example], Sequence[str]], dict[str, float]]


@dataclass(frozen=True)
class Suite:
    """One named evaluation set.

    Attributes:
        name / kind: the name given to :func:`load_suite`; ``"safety"``, ``"utility"`` or ``"calibration"``.
        size: the expected number of examples. files: what the user brings, relative to ``root``
            (alternatives separated by `` | ``). source: where to get them. pairing: text ↔ image.
        metric: how it is scored. load: ``(root, image_root, image_types, check_images) -> examples``.
        score: the official mechanical scorer ``(examples, answers) -> {name: value}``, or ``None``.
    """

    name: str
    kind: str
    size: str
    files: str
    source: str
    pairing: str
    metric: str
    load: Loader
    score: Scorer | None = None


def _pick(root: Path, *candidates: str, what: str, folder: bool = False) -> Path:
    for c in candidates:
        p = root / c
        if (p.is_dir() if folder else p.is_file()):
            return p
    raise FileNotFoundError(f"{what} not found under {root} (tried {', '.join(candidates)}); see "
                            "`moras-interp suite --list` for the files each suite needs.")


def _images(root: Path, image_root: Path | None, *candidates: str, what: str) -> Path:
    return image_root if image_root is not None else _pick(root, *candidates, what=f"{what} image folder "
                                                           "(or pass image_root)", folder=True)


def _no_types(name: str, image_types: tuple[str | None, ...] | None) -> None:
    if image_types is not None:
        raise ValueError(f"image_types applies to mm-safetybench only, not {name!r}.")


def _figstep(csv_names: tuple[str, ...], img_names: tuple[str, ...], name: str) -> Loader:
    def load(root: Path, image_root: Path | None, image_types: tuple[str | None, ...] | None,
             check: bool) -> list[Example]:
        _no_types(name, image_types)
        csv = _pick(root, *csv_names, what=f"{name} question CSV")
        return load_figstep(csv, _images(root, image_root, *img_names, what=name), check_images=check)
    return load


def _mmsb(tiny: bool) -> Loader:
    def load(root: Path, image_root: Path | None, image_types: tuple[str | None, ...] | None,
             check: bool) -> list[Example]:
        qdir = _pick(root, "data/processed_questions", "processed_questions", what="MM-SafetyBench questions",
                     folder=True)
        types = image_types or ("SD_TYPO",)
        imgs = None if all(t is None for t in types) else \
            _images(root, image_root, "data/imgs", "imgs", "images", what="MM-SafetyBench")
        ids = mmsb_tiny_ids(_pick(root, "TinyVersion_ID_List.json", "data/TinyVersion_ID_List.json",
                                  what="MM-SafetyBench TinyVersion_ID_List.json")) if tiny else None
        return load_mm_safetybench_all(qdir, imgs, types, ids=ids, check_images=check)
    return load


def _xstest(root: Path, image_root: Path | None, image_types: tuple[str | None, ...] | None,
            check: bool) -> list[Example]:
    _no_types("xstest", image_types)
    return load_xstest(_pick(root, "xstest_prompts.csv", "xstest_v2_prompts.csv", what="XSTest prompts CSV"))


def _vlsafe(root: Path, image_root: Path | None, image_types: tuple[str | None, ...] | None,
            check: bool) -> list[Example]:
    _no_types("vlsafe-calib", image_types)
    unsafe = _pick(root, "train/VLSafe_harmlessnss_alignment.jsonl", "train/VLSafe_harmlessness_alignment.jsonl",
                   "VLSafe_harmlessnss_alignment.jsonl", "VLSafe_harmlessness_alignment.jsonl",
                   what="VLSafe unsafe file")
    safe = _pick(root, "train/vlsafe_convert_safe.jsonl", "vlsafe_convert_safe.jsonl", what="VLSafe safe file")
    return vlsafe_calibration(unsafe, safe, _images(root, image_root, "images", what="VLSafe"), check_images=check)


def _mmvet(root: Path, image_root: Path | None, image_types: tuple[str | None, ...] | None,
           check: bool) -> list[Example]:
    _no_types("mm-vet", image_types)
    return U.load_mmvet(_pick(root, "mm-vet.json", what="MM-Vet mm-vet.json"),
                        _images(root, image_root, "images", what="MM-Vet"), check_images=check)


def _sqa(root: Path, image_root: Path | None, image_types: tuple[str | None, ...] | None,
         check: bool) -> list[Example]:
    _no_types("scienceqa", image_types)
    probs = _pick(root, "problems.json", "data/scienceqa/problems.json", what="ScienceQA problems.json")
    splits = _pick(root, "pid_splits.json", "data/scienceqa/pid_splits.json", what="ScienceQA pid_splits.json")
    return U.load_scienceqa(probs, splits, _images(root, image_root, "images/test", "test", what="ScienceQA"),
                            check_images=check)


def _gqa(root: Path, image_root: Path | None, image_types: tuple[str | None, ...] | None,
         check: bool) -> list[Example]:
    _no_types("gqa", image_types)
    q = _pick(root, "testdev_balanced_questions.json", "questions/testdev_balanced_questions.json",
              what="GQA testdev_balanced_questions.json")
    return U.load_gqa(q, _images(root, image_root, "images", what="GQA"), check_images=check)


def _mme(root: Path, image_root: Path | None, image_types: tuple[str | None, ...] | None,
         check: bool) -> list[Example]:
    _no_types("mme", image_types)
    base = root / "MME_Benchmark_release_version" if (root / "MME_Benchmark_release_version").is_dir() else root
    return U.load_mme(base, check_images=check)


def _generic(fmt: str) -> Loader:
    def load(root: Path, image_root: Path | None, image_types: tuple[str | None, ...] | None,
             check: bool) -> list[Example]:
        _no_types(fmt, image_types)
        return (load_jsonl if fmt == "jsonl" else load_csv)(root, image_root, check_images=check)
    return load


def _mme_score(examples: Sequence[Example], answers: Sequence[str]) -> dict[str, float]:
    t = U.mme_scores(examples, answers)
    return {f"score_{c}": float(s) for c, s in zip(t["category"], t["score"])}


_FIGSTEP_SRC = "github.com/ThuCCSLab/FigStep (MIT): data/question/*.csv and data/images/SafeBench*/"
_MMSB_SRC = ("github.com/isXinLiu/MM-SafetyBench: data/processed_questions/*.json (13 files), "
             "TinyVersion_ID_List.json; images: the release's Google-Drive imgs.zip → imgs/{scenario}/{SD,TYPO,SD_TYPO}/")
_MMSB_PAIR = ("SD_TYPO + 'Rephrased Question' (the authors' run); SD ↔ 'Rephrased Question(SD)', TYPO ↔ "
              "'Rephrased Question'; image_types picks any of them (None = the original 'Question', no image)")

SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("figstep", "safety", "500 unsafe", "data/question/safebench.csv | safebench.csv; images "
          "data/images/SafeBench/query_{dataset}_{category_id}_{task_id}_6.png", _FIGSTEP_SRC,
          "every SafeBench image with FigStep's fixed prompt (FIGSTEP_PROMPT)", "ASR (refusal judge)",
          _figstep(("data/question/safebench.csv", "safebench.csv"), ("data/images/SafeBench", "SafeBench",
                                                                       "images"), "figstep")),
    Suite("figstep-tiny", "safety", "50 unsafe", "data/question/SafeBench-Tiny.csv | SafeBench-Tiny.csv; images "
          "data/images/SafeBench-Tiny/", _FIGSTEP_SRC, "as figstep", "ASR (refusal judge)",
          _figstep(("data/question/SafeBench-Tiny.csv", "SafeBench-Tiny.csv"),
                   ("data/images/SafeBench-Tiny", "SafeBench-Tiny", "images"), "figstep-tiny")),
    Suite("mm-safetybench", "safety", "1,680 unsafe per image type", "data/processed_questions/*.json | "
          "processed_questions/*.json; images data/imgs/ | imgs/ | images/", _MMSB_SRC, _MMSB_PAIR,
          "ASR (refusal judge)", _mmsb(False)),
    Suite("mm-safetybench-tiny", "safety", "168 unsafe per image type", "as mm-safetybench + "
          "TinyVersion_ID_List.json", _MMSB_SRC, _MMSB_PAIR, "ASR (refusal judge)", _mmsb(True)),
    Suite("xstest", "safety", "250 safe + 200 unsafe (text only)", "xstest_prompts.csv",
          "github.com/paul-rottger/exaggerated-safety (CC-BY-4.0)", "the prompt alone, no image",
          "over-refusal on safe, ASR on unsafe (contrast_*) prompts", _xstest),
    Suite("vlsafe-calib", "calibration", "50 unsafe + 50 safe", "train/VLSafe_harmlessnss_alignment.jsonl "
          "(or ..._harmlessness_...), train/vlsafe_convert_safe.jsonl, images/",
          "VLSafe (Chen et al., DRESS): its harmlessness-alignment JSONL + COCO images; the safe file is the "
          "MoRAS authors' own (not published: bring it)", "query ↔ image_id / safe_query ↔ image_pth; the same "
          "seed-0 indices np.random.choice(3000, 50) in both files", "fits (x0, k): x0 = mean s, k = ln99/(1-x0)",
          _vlsafe),
    Suite("mm-vet", "utility", "218", "mm-vet.json, images/", "github.com/yuweihao/MM-Vet (mm-vet.zip)",
          "question ↔ imagename", "GPT-4 judge (not mechanical): answers written as mmvet_answers.json", _mmvet),
    Suite("scienceqa", "utility", "2,017 (test problems with an image)", "problems.json, pid_splits.json, "
          "images/test/{pid}/image.png | test/{pid}/image.png", "github.com/lupantech/ScienceQA (data/scienceqa)",
          "LLaVA-1.5 prompt: Context / question / 'A. choice' lines + 'Answer with the option's letter ...'",
          "accuracy (LLaVA's eval_science_qa.py letter parse)", _sqa, U.scienceqa_accuracy),
    Suite("gqa", "utility", "12,578 (testdev balanced)", "testdev_balanced_questions.json, images/{imageId}.jpg",
          "cs.stanford.edu/people/dorarad/gqa (questions1.2.zip, images.zip)", "question + 'Answer the question "
          "using a single word or phrase.'", "exact match after LLaVA's normalisation (strip '.', lower)", _gqa,
          U.gqa_accuracy),
    Suite("mme", "utility", "2,374 yes/no (1,187 images)", "MME_Benchmark_release_version/<category>/...",
          "github.com/BradyFU/Awesome-Multimodal-Large-Language-Models (MME, on request)",
          "question (ends 'Please answer yes or no.') ↔ its image", "acc, acc+ per category; score = "
          "100(acc+acc+), Perception (max 2000) / Cognition (max 800)", _mme, _mme_score),
    Suite("jsonl", "generic", "any", "ROOT is the .jsonl file itself (text|question|prompt, image, label, answer, "
          "id)", "your own data", "text ↔ image (relative to image_root)", "ASR / over-refusal from label; "
          "utility = answer contains the gold 'answer'", _generic("jsonl")),
    Suite("csv", "generic", "any", "ROOT is the .csv file itself (same columns as jsonl)", "your own data",
          "as jsonl", "as jsonl", _generic("csv")),
)}


def _suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"Unknown suite {name!r}; suites: {', '.join(SUITES)}.")
    return SUITES[name]


def load_suite(name: str, root: str | Path, *, image_root: str | Path | None = None,
               image_types: Sequence[str | None] | None = None, check_images: bool = True) -> list[Example]:
    """The examples of suite ``name`` from the files under ``root`` (see :data:`SUITES` for the layout).

    ``root`` is the folder holding the suite's files (for the generic ``jsonl`` / ``csv`` suites, the file
    itself). ``image_root`` overrides where the images are; ``image_types`` (mm-safetybench only) picks any of
    ``"SD"``, ``"TYPO"``, ``"SD_TYPO"`` (default) and ``None`` / ``"text"`` (text-only), all in one list.
    """
    s = _suite(name)
    base = Path(root).expanduser()
    if s.kind == "generic" and not base.is_file():
        raise FileNotFoundError(f"Suite {name!r}: data file not found: {base}")
    if s.kind != "generic" and not base.is_dir():
        raise FileNotFoundError(f"Suite {name!r}: root folder not found: {base}")
    types = None if image_types is None else tuple(None if t in (None, "text", "none") else t for t in image_types)
    return s.load(base, None if image_root is None else Path(image_root).expanduser(), types, check_images)


def score_suite(name: str, examples: Sequence[Example], answers: Sequence[str]) -> dict[str, float] | None:
    """The suite's official mechanical metric(s) of ``answers`` (same order as ``examples``), or ``None``
    (safety suites are scored by the refusal judge; MM-Vet needs a model judge)."""
    s = _suite(name)
    return None if s.score is None else s.score(examples, answers)


def suite_table() -> str:
    """A plain-text listing of every suite: kind, size, files to bring, source, pairing, metric."""
    lines = []
    for s in SUITES.values():
        lines += [f"{s.name}  [{s.kind}, {s.size}]", f"    files:   {s.files}", f"    get:     {s.source}",
                  f"    pairing: {s.pairing}", f"    metric:  {s.metric}"]
    return "\n".join(lines)
