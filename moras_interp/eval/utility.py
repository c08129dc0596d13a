"""Utility benchmarks the MoRAS paper reports on (MM-Vet, ScienceQA-IMG, GQA, MME): loaders for the official
files and the official mechanical scorers.

Every loader returns :class:`~moras_interp.eval.datasets.Example` records labelled ``"safe"`` (a utility
question must be answered) with the gold answer in ``meta["answer"]`` (what
:func:`moras_interp.moras.examples.gold_answer` reads) and the question's own fields in ``meta``. Prompts are
the ones LLaVA-1.5's evaluation files carry, which the MoRAS authors feed unchanged (snumprlab/moras,
``LLaVA/eval/{mmvet,sciqa,gqa,mme}.py``). Scorers take the examples and the model's answers in the same order.

MM-Vet is scored by a GPT-4 judge (0–1 per answer), not mechanically: :func:`mmvet_submission` writes the
answers in the grader's input format and nothing here computes an MM-Vet score.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moras_interp.eval.datasets import BENCHMARK_FILE_FIX, DatasetFormatError, Example, _check_images
from moras_interp.eval.metrics import check_pairs
from moras_interp.readers import read_json

__all__ = ["GQA_PROMPT", "MME_CATEGORIES", "MMVET_JUDGE_NOTE", "SQA_OPTIONS", "SQA_PROMPT", "gqa_accuracy",
           "gqa_normalise", "load_gqa", "load_mme", "load_mmvet", "load_scienceqa", "mme_parse", "mme_scores",
           "mmvet_submission", "scienceqa_accuracy", "scienceqa_parse"]

#: Suffix LLaVA-1.5 appends to every GQA question (``llava_gqa_testdev_balanced.jsonl``).
GQA_PROMPT = "\nAnswer the question using a single word or phrase."
#: Suffix LLaVA-1.5's ScienceQA runner appends (``model_vqa_science.py``; the MoRAS ``sciqa.py`` too).
SQA_PROMPT = "\nAnswer with the option's letter from the given choices directly."
SQA_OPTIONS = "ABCDE"
#: MME's categories as its ``eval_tool/calculation.py`` groups them.
MME_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                   "artwork", "OCR"),
    "Cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}
MMVET_JUDGE_NOTE = ("MM-Vet has no mechanical metric: its official score is a GPT-4 grade (0-1) of each answer "
                    "against the gold answer (github.com/yuweihao/MM-Vet, mm-vet_evaluator). Write the answers "
                    "with mmvet_submission() and grade them with that evaluator or another model judge.")


def _json(path: str | Path, what: str) -> Any:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return read_json(p, expect=None, what=f"the {what}", error=DatasetFormatError, fix=BENCHMARK_FILE_FIX)


def _need(item: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(item, dict):
        raise DatasetFormatError(f"{where}: expected a JSON object, got {type(item).__name__}.")
    missing = [k for k in keys if k not in item]
    if missing:
        raise DatasetFormatError(f"{where}: missing key(s) {missing}; found {sorted(item)}.")


def load_mmvet(json_path: str | Path, image_root: str | Path, *, check_images: bool = True) -> list[Example]:
    """MM-Vet ``mm-vet.json``: ``{"v1_0": {"imagename": "v1_0.png", "question", "answer", "capability": [...]}}``.

    Text = ``question`` (as the MoRAS ``mmvet.py`` feeds it), image = ``image_root/imagename``, gold =
    ``answer`` (may hold ``<AND>`` / ``<OR>`` alternatives for the judge), ``meta["capability"]`` the list of
    rec / ocr / know / gen / spat / math. Scoring needs a model judge (:data:`MMVET_JUDGE_NOTE`).
    """
    data = _json(json_path, "MM-Vet question file")
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{json_path}: expected an object keyed by question id (v1_0, ...).")
    out = []
    for qid, item in data.items():
        _need(item, ("imagename", "question", "answer"), f"{json_path}: entry {qid!r}")
        meta = {k: v for k, v in item.items() if k not in ("question", "imagename")} | {"benchmark": "mm-vet"}
        out.append(Example(text=str(item["question"]), image=Path(image_root) / item["imagename"], label="safe",
                           meta=meta, id=str(qid)))
    if check_images:
        _check_images(out, Path(json_path))
    return out


def mmvet_submission(examples: Sequence[Example], answers: Sequence[str]) -> dict[str, str]:
    """``{question id: answer}``, the JSON the MM-Vet evaluator grades (ids must be MM-Vet's ``v1_k``)."""
    if len(examples) != len(answers):
        raise ValueError(f"mmvet_submission: {len(examples)} examples but {len(answers)} answers.")
    return {str(e.id): str(a) for e, a in zip(examples, answers)}


def load_scienceqa(problems_json: str | Path, pid_splits_json: str | Path, image_root: str | Path | None, *,
                   split: str = "test", images_only: bool = True, check_images: bool = True) -> list[Example]:
    """ScienceQA ``problems.json`` (``{pid: {question, choices, answer (index), hint, image, subject, ...}}``)
    + ``pid_splits.json`` (``{"train": [pid, ...], "val": ..., "test": ...}``), in the split's pid order.

    Prompt as LLaVA-1.5's ``llava_test_CQM-A.json`` + runner: ``"Context: {hint}\\n"`` (only when the hint is
    non-empty), the question, one line ``"A. choice"`` per choice, then :data:`SQA_PROMPT`. Image =
    ``image_root/{pid}/{image}`` (the official ``test/{pid}/image.png``). ``images_only`` keeps the problems
    with an image (ScienceQA-IMG: 2,017 of the 4,241 test problems, what the MoRAS authors evaluate); without
    it, problems without an image are text-only examples. Gold = the answer's letter.
    """
    problems = _json(problems_json, "ScienceQA problems.json")
    splits = _json(pid_splits_json, "ScienceQA pid_splits.json")
    if not isinstance(splits, dict) or split not in splits:
        found = sorted(splits) if isinstance(splits, dict) else type(splits).__name__
        raise DatasetFormatError(f"{pid_splits_json}: no split {split!r}; found {found}.")
    out = []
    for pid in splits[split]:
        where = f"{problems_json}: problem {pid!r}"
        if pid not in problems:
            raise DatasetFormatError(f"{where} is listed in {pid_splits_json} but absent.")
        prob = problems[pid]
        _need(prob, ("question", "choices", "answer"), where)
        choices, ans = prob["choices"], prob["answer"]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(SQA_OPTIONS):
            raise DatasetFormatError(f"{where}: 'choices' must be a list of 2-{len(SQA_OPTIONS)}, got {choices!r}.")
        if not isinstance(ans, int) or not 0 <= ans < len(choices):
            raise DatasetFormatError(f"{where}: 'answer' must index 'choices' (0-{len(choices) - 1}), got {ans!r}.")
        if prob.get("image") is None and images_only:
            continue
        if prob.get("image") is not None and image_root is None:
            raise ValueError("load_scienceqa: image_root is required for problems with images.")
        hint = (prob.get("hint") or "").strip()
        opts = "\n".join(f"{SQA_OPTIONS[i]}. {c}" for i, c in enumerate(choices))
        text = (f"Context: {hint}\n" if hint else "") + f"{prob['question']}\n{opts}{SQA_PROMPT}"
        image = None if prob.get("image") is None else Path(image_root) / str(pid) / prob["image"]  # type: ignore[arg-type]
        meta = {k: v for k, v in prob.items() if k not in ("lecture", "solution")}
        meta |= {"answer": SQA_OPTIONS[ans], "n_choices": len(choices), "benchmark": "scienceqa"}
        out.append(Example(text=text, image=image, label="safe", meta=meta, id=str(pid)))
    if check_images:
        _check_images(out, Path(problems_json))
    return out


def scienceqa_parse(pred: str, n_choices: int) -> int:
    """LLaVA's ``eval_science_qa.py`` parse: the whole answer is a letter, or starts ``"X. "``, or contains
    exactly one ``"The answer is X."``; the choice index, or -1 (FAILED / a letter beyond the choices)."""
    if pred in SQA_OPTIONS:
        letter = pred
    elif len(pred) >= 3 and pred[0] in SQA_OPTIONS and pred[1:3] == ". ":
        letter = pred[0]
    else:
        found = re.findall(r"The answer is ([A-Z]).", pred)
        letter = found[0] if len(found) == 1 else "FAILED"
    return SQA_OPTIONS.index(letter) if letter in SQA_OPTIONS[:n_choices] else -1


def scienceqa_accuracy(examples: Sequence[Example], answers: Sequence[str]) -> dict[str, float]:
    """``{"accuracy": correct / n, "n", "n_failed"}`` with :func:`scienceqa_parse` (LLaVA's official rule;
    the answer is stripped of surrounding whitespace first, as LLaVA's runner does)."""
    check_pairs(answers, examples, "scienceqa_accuracy", of="examples")
    idx = [scienceqa_parse(a.strip(), int(e.meta["n_choices"])) for e, a in zip(examples, answers)]
    gold = [SQA_OPTIONS.index(e.meta["answer"]) for e in examples]
    return {"accuracy": float(np.mean(np.array(idx) == np.array(gold))), "n": float(len(idx)),
            "n_failed": float(sum(i < 0 for i in idx))}


def load_gqa(questions_json: str | Path, image_root: str | Path, *, prompt: str = GQA_PROMPT,
             check_images: bool = True) -> list[Example]:
    """GQA questions file (e.g. ``testdev_balanced_questions.json``, 12,578 questions):
    ``{qid: {"imageId", "question", "answer", "fullAnswer", "types", "isBalanced", ...}}``.

    Text = question + ``prompt`` (LLaVA-1.5's suffix), image = ``image_root/{imageId}.jpg``, gold = ``answer``.
    ``meta`` keeps ``answer``, ``fullAnswer``, ``types``, ``imageId``.
    """
    data = _json(questions_json, "GQA questions file")
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{questions_json}: expected an object keyed by question id.")
    out = []
    for qid, q in data.items():
        _need(q, ("imageId", "question", "answer"), f"{questions_json}: question {qid!r}")
        meta = {k: q[k] for k in ("answer", "fullAnswer", "types", "imageId") if k in q} | {"benchmark": "gqa"}
        out.append(Example(text=str(q["question"]) + prompt, image=Path(image_root) / f"{q['imageId']}.jpg",
                           label="safe", meta=meta, id=str(qid)))
    if check_images:
        _check_images(out, Path(questions_json))
    return out


def gqa_normalise(pred: str) -> str:
    """LLaVA's ``convert_gqa_for_eval.py``: trailing full stops removed, lower-cased (after stripping
    whitespace, as LLaVA's runner strips its outputs)."""
    return pred.strip().rstrip(".").lower()


def gqa_accuracy(examples: Sequence[Example], answers: Sequence[str]) -> dict[str, float]:
    """``{"accuracy", "n"}``: GQA's ``eval.py`` exact match of the normalised prediction with ``answer``."""
    check_pairs(answers, examples, "gqa_accuracy", of="examples")
    hits = [gqa_normalise(a) == str(e.meta["answer"]) for e, a in zip(examples, answers)]
    return {"accuracy": float(np.mean(hits)), "n": float(len(hits))}


_MME_EXT = (".jpg", ".png", ".jpeg")


def _mme_category(root: Path, cat: str) -> tuple[Path, Path]:
    d = root / cat
    if (d / "questions_answers_YN").is_dir():
        return d / "images", d / "questions_answers_YN"
    return d, d


def load_mme(root: str | Path, *, categories: Sequence[str] | None = None,
             check_images: bool = True) -> list[Example]:
    """MME (``MME_Benchmark_release_version/``): per category either ``images/`` + ``questions_answers_YN/``
    (artwork, celebrity, landmark, posters, scene) or images and ``.txt`` side by side. Each ``NAME.txt``
    holds one ``question<TAB>answer`` line per question (two per image: one Yes, one No) about the image
    ``NAME.jpg`` / ``.png``; the question already ends in "Please answer yes or no.".

    ``id`` = ``"{category}/{NAME}/{k}"``; ``meta``: category, eval_type (Perception / Cognition), image
    (``NAME.ext``), answer (Yes / No). A line without exactly one tab or an answer other than Yes / No is an
    error naming the file and line.
    """
    base = Path(root).expanduser()
    wanted = list(categories) if categories is not None else [c for cs in MME_CATEGORIES.values() for c in cs]
    kind = {c: t for t, cs in MME_CATEGORIES.items() for c in cs}
    unknown = [c for c in wanted if c not in kind]
    if unknown:
        raise ValueError(f"Unknown MME categor(ies) {unknown}; MME has {list(kind)}.")
    out = []
    for cat in wanted:
        img_dir, qa_dir = _mme_category(base, cat)
        txts = sorted(qa_dir.glob("*.txt")) if qa_dir.is_dir() else []
        if not txts:
            raise FileNotFoundError(f"MME category {cat!r}: no question files under {qa_dir} (expected "
                                    "MME_Benchmark_release_version/<category>/[questions_answers_YN/]*.txt).")
        for txt in txts:
            image = next((img_dir / (txt.stem + e) for e in _MME_EXT if (img_dir / (txt.stem + e)).is_file()),
                         img_dir / (txt.stem + _MME_EXT[0]))
            k = 0
            for lineno, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.strip().split("\t")
                if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                    raise DatasetFormatError(f"{txt}:{lineno}: expected 'question<TAB>Yes|No', got {line!r}.")
                meta = {"category": cat, "eval_type": kind[cat], "image": image.name, "answer": parts[1].strip(),
                        "benchmark": "mme"}
                out.append(Example(text=parts[0], image=image, label="safe", meta=meta, id=f"{cat}/{txt.stem}/{k}"))
                k += 1
    if check_images:
        _check_images(out, base)
    return out


def mme_parse(pred: str) -> str:
    """MME's ``calculation.py``: lower-cased; ``yes`` / ``no`` if it is exactly that, else ``yes`` if "yes"
    occurs in its first 4 characters, else ``no`` if "no" does, else ``other``."""
    p = pred.lower()
    if p in ("yes", "no"):
        return p
    return "yes" if "yes" in p[:4] else "no" if "no" in p[:4] else "other"


def mme_scores(examples: Sequence[Example], answers: Sequence[str]) -> pd.DataFrame:
    """Per-category MME table as its ``calculation.py``: acc (questions right), acc_plus (images with every
    question right), score = 100·(acc + acc_plus), other_num (unparsable answers); then one row per eval type
    (Perception: sum of its 10 category scores, max 2000; Cognition: 4, max 800) with only ``score``.
    Answers are stripped of surrounding whitespace first (LLaVA's runner strips its outputs)."""
    check_pairs(answers, examples, "mme_scores", of="examples")
    df = pd.DataFrame({"category": [e.meta["category"] for e in examples],
                       "image": [e.meta["category"] + "/" + e.meta["image"] for e in examples],
                       "gold": [str(e.meta["answer"]).lower() for e in examples],
                       "pred": [mme_parse(a.strip()) for a in answers]})
    df["ok"] = df["gold"] == df["pred"]
    rows = []
    for cat, g in df.groupby("category", sort=False):
        per_img = g.groupby("image")["ok"].all()
        acc, acc_plus = float(g["ok"].mean()), float(per_img.mean())
        rows.append({"category": cat, "n_questions": len(g), "n_images": len(per_img), "acc": acc,
                     "acc_plus": acc_plus, "score": 100 * (acc + acc_plus), "other_num": int((g["pred"] == "other").sum())})
    table = pd.DataFrame(rows)
    for etype, cats in MME_CATEGORIES.items():
        sub = table[table["category"].isin(cats)]
        if len(sub):
            rows.append({"category": etype, "score": float(sub["score"].sum())})
    return pd.DataFrame(rows)
