"""Utility loaders on small files written in each benchmark's official format; the official scorers against
hand-computed numpy references."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moras_interp.eval.datasets import DatasetFormatError
from moras_interp.eval.suites import load_suite, score_suite
from moras_interp.eval.utility import (
    MMVET_JUDGE_NOTE,
    gqa_accuracy,
    gqa_normalise,
    load_gqa,
    load_mme,
    load_mmvet,
    load_scienceqa,
    mme_parse,
    mme_scores,
    mmvet_submission,
    scienceqa_accuracy,
    scienceqa_parse,
)
from moras_interp.moras.examples import gold_answer, safety_label


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(path)
    return path


def test_mmvet_loader_and_submission(tmp_path):
    data = {"v1_0": {"imagename": "v1_0.png", "capability": ["ocr", "math"], "question": "What is x?", "answer": "3"},
            "v1_1": {"imagename": "v1_1.jpg", "capability": ["rec"], "question": "Who?", "answer": "a<OR>b"}}
    (tmp_path / "mm-vet.json").write_text(json.dumps(data))
    _png(tmp_path / "images" / "v1_0.png")
    _png(tmp_path / "images" / "v1_1.jpg")
    ex = load_suite("mm-vet", tmp_path)
    assert [e.id for e in ex] == ["v1_0", "v1_1"] and [e.text for e in ex] == ["What is x?", "Who?"]
    assert ex[0].image == tmp_path / "images" / "v1_0.png" and ex[1].meta["capability"] == ["rec"]
    assert [gold_answer(e) for e in ex] == ["3", "a<OR>b"] and {safety_label(e) for e in ex} == {"safe"}
    assert mmvet_submission(ex, ["4", "b"]) == {"v1_0": "4", "v1_1": "b"}
    assert score_suite("mm-vet", ex, ["4", "b"]) is None and "GPT-4" in MMVET_JUDGE_NOTE
    del data["v1_1"]["question"]
    (tmp_path / "mm-vet.json").write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=r"mm-vet.json: entry 'v1_1': missing key\(s\) \['question'\]"):
        load_mmvet(tmp_path / "mm-vet.json", tmp_path / "images")


def _sqa(tmp_path):
    problems = {
        "10": {"question": "Which is a mammal?", "choices": ["frog", "cat", "trout"], "answer": 1,
               "hint": "Look at the picture.", "image": "image.png", "subject": "natural science",
               "lecture": "L", "solution": "S"},
        "11": {"question": "What is 2+2?", "choices": ["3", "4"], "answer": 1, "hint": "", "image": None},
        "12": {"question": "Pick the warmest.", "choices": ["ice", "fire", "snow", "rain"], "answer": 1,
               "hint": "", "image": "image.png"},
        "13": {"question": "Unused train problem", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None},
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"train": ["13"], "test": ["12", "10", "11"]}))
    for pid in ("10", "12"):
        _png(tmp_path / "images" / "test" / pid / "image.png")


def test_scienceqa_loader_prompts_follow_llava(tmp_path):
    _sqa(tmp_path)
    ex = load_suite("scienceqa", tmp_path)
    assert [e.id for e in ex] == ["12", "10"]  # split order, only problems with an image
    assert ex[1].text == ("Context: Look at the picture.\nWhich is a mammal?\nA. frog\nB. cat\nC. trout\n"
                          "Answer with the option's letter from the given choices directly.")
    assert ex[0].text == ("Pick the warmest.\nA. ice\nB. fire\nC. snow\nD. rain\n"
                          "Answer with the option's letter from the given choices directly.")
    assert ex[1].image == tmp_path / "images" / "test" / "10" / "image.png"
    assert [gold_answer(e) for e in ex] == ["B", "B"] and "lecture" not in ex[1].meta
    allp = load_scienceqa(tmp_path / "problems.json", tmp_path / "pid_splits.json", tmp_path / "images" / "test",
                          images_only=False)
    assert [e.id for e in allp] == ["12", "10", "11"] and allp[2].image is None
    with pytest.raises(DatasetFormatError, match="no split 'val'"):
        load_scienceqa(tmp_path / "problems.json", tmp_path / "pid_splits.json", tmp_path, split="val")


def test_scienceqa_parse_and_accuracy_against_hand_counts(tmp_path):
    # LLaVA's eval_science_qa.py rules, case by case
    assert scienceqa_parse("B", 3) == 1 and scienceqa_parse("C. trout", 3) == 2
    assert scienceqa_parse("The answer is A.", 3) == 0
    assert scienceqa_parse("The answer is A. The answer is B.", 3) == -1  # two matches: FAILED
    assert scienceqa_parse("b", 3) == -1 and scienceqa_parse("D", 3) == -1 and scienceqa_parse("B.", 3) == -1
    _sqa(tmp_path)
    ex = load_suite("scienceqa", tmp_path)  # golds B (4 choices), B (3 choices)
    for answers, correct in ((["B", "B"], [1, 1]), (["B. fire", "The answer is C."], [1, 0]),
                             (["  D ", "cat"], [0, 0]), (["The answer is B.", " B\n"], [1, 1])):
        got = scienceqa_accuracy(ex, answers)
        assert got["accuracy"] == pytest.approx(np.mean(correct)) and got["n"] == 2
    assert scienceqa_accuracy(ex, ["x", "B"])["n_failed"] == 1
    assert score_suite("scienceqa", ex, ["B", "A"])["accuracy"] == pytest.approx(0.5)


def test_gqa_loader_and_exact_match(tmp_path):
    q = {"201": {"imageId": "n1", "question": "Is it sunny?", "answer": "no", "fullAnswer": "No, it is not.",
                 "types": {"structural": "verify"}, "isBalanced": True},
         "202": {"imageId": "n2", "question": "Which side is the cup on?", "answer": "left"},
         "203": {"imageId": "n1", "question": "What color is it?", "answer": "light blue"}}
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(q))
    _png(tmp_path / "images" / "n1.jpg")
    _png(tmp_path / "images" / "n2.jpg")
    ex = load_suite("gqa", tmp_path)
    assert ex[0].text == "Is it sunny?\nAnswer the question using a single word or phrase."
    assert ex[2].image == tmp_path / "images" / "n1.jpg" and [gold_answer(e) for e in ex] == ["no", "left", "light blue"]
    assert gqa_normalise(" Left.. ") == "left" and gqa_normalise("Light Blue.") == "light blue"
    for answers, correct in ((["No.", "Left", "light blue"], [1, 1, 1]), (["no", "the left", "blue"], [1, 0, 0]),
                             (["yes", "left.", "Light blue"], [0, 1, 1])):
        assert gqa_accuracy(ex, answers)["accuracy"] == pytest.approx(np.mean(correct))
    del q["202"]["imageId"]
    (tmp_path / "q.json").write_text(json.dumps(q))
    with pytest.raises(DatasetFormatError, match=r"question '202': missing key\(s\) \['imageId'\]"):
        load_gqa(tmp_path / "q.json", tmp_path / "images")


def _mme(root: Path) -> None:
    art = root / "artwork"  # images/ + questions_answers_YN/ layout
    for name in ("10002", "10049"):
        _png(art / "images" / f"{name}.jpg")
    (art / "questions_answers_YN").mkdir(parents=True)
    (art / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork by Monet? Please answer yes or no.\tYes\nIs this artwork by Dali? Please answer yes or no.\tNo\n")
    (art / "questions_answers_YN" / "10049.txt").write_text(
        "Is this a portrait? Please answer yes or no.\tNo\r\nIs this a landscape? Please answer yes or no.\tYes\r\n")
    cnt = root / "count"  # flat layout, png
    for name, qa in (("a1", "Are there two dogs?\tYes\nAre there three dogs?\tNo\n"),
                     ("a2", "Is there one car?\tNo\nAre there two cars?\tYes\n")):
        _png(cnt / f"{name}.png")
        (cnt / f"{name}.txt").write_text(qa)
    code = root / "code_reasoning"
    _png(code / "c1.png")
    (code / "c1.txt").write_text("Will it print 3?\tYes\nWill it print 4?\tNo\n")


def _mme_reference(gold: list[str], pred: list[str]) -> tuple[float, float]:
    """MME calculation.py, transcribed: chunks of two lines per image, acc over questions, acc+ over images."""
    def parse(p: str) -> str:
        p = p.lower()
        return p if p in ("yes", "no") else "yes" if "yes" in p[:4] else "no" if "no" in p[:4] else "other"
    ok = np.array([g.lower() == parse(p) for g, p in zip(gold, pred)])
    return float(ok.mean()), float(ok.reshape(-1, 2).all(axis=1).mean())


def test_mme_loader_and_scores_against_calculation_py(tmp_path):
    _mme(tmp_path / "MME_Benchmark_release_version")
    ex = load_mme(tmp_path / "MME_Benchmark_release_version", categories=["artwork", "count", "code_reasoning"])
    assert [e.id for e in ex] == ["artwork/10002/0", "artwork/10002/1", "artwork/10049/0", "artwork/10049/1",
                                  "count/a1/0", "count/a1/1", "count/a2/0", "count/a2/1",
                                  "code_reasoning/c1/0", "code_reasoning/c1/1"]
    assert ex[0].text == "Is this artwork by Monet? Please answer yes or no." and gold_answer(ex[3]) == "Yes"
    assert ex[0].image.name == "10002.jpg" and ex[0].image.parent.name == "images" and ex[4].image.name == "a1.png"
    assert ex[8].meta["eval_type"] == "Cognition" and ex[0].meta["eval_type"] == "Perception"
    assert [mme_parse(p) for p in ("Yes, it is.", "No.", "The answer is yes", "not sure", "NO", "nope")] == \
        ["yes", "no", "other", "no", "no", "no"]
    pred = ["Yes", "No, it is not", "yes", "Yes",  # artwork: 3/4 right, image 1 both right
            "yes.", "No", "Maybe", "Yes",          # count: 3/4 right ("Maybe" = other), image 1 both right
            "No", "no"]                            # code: 1/2 right
    table = mme_scores(ex, [" " + p + "\n" for p in pred]).set_index("category")
    gold = [e.meta["answer"] for e in ex]
    for cat, sl in (("artwork", slice(0, 4)), ("count", slice(4, 8)), ("code_reasoning", slice(8, 10))):
        acc, acc_plus = _mme_reference(gold[sl], pred[sl])
        assert table.loc[cat, "acc"] == pytest.approx(acc) and table.loc[cat, "acc_plus"] == pytest.approx(acc_plus)
        assert table.loc[cat, "score"] == pytest.approx(100 * (acc + acc_plus))
    assert table.loc["artwork", "score"] == pytest.approx(125.0) and table.loc["count", "other_num"] == 1
    assert table.loc["Perception", "score"] == pytest.approx(table.loc["artwork", "score"] + table.loc["count", "score"])
    assert table.loc["Cognition", "score"] == pytest.approx(50.0)
    with pytest.raises(FileNotFoundError, match="MME category 'existence': no question files"):
        load_suite("mme", tmp_path)  # finds MME_Benchmark_release_version/, wants all 14 categories


@pytest.mark.parametrize(("content", "match"), [
    ("Is it red?\tYes\nIs it blue? No\n", r"a1.txt:2: expected 'question<TAB>Yes\|No'"),
    ("Is it red?\tMaybe\n", r"a1.txt:1: expected"),
    ("Is it red?\tYes\textra\n", r"a1.txt:1: expected"),
])
def test_mme_bad_lines_are_errors(tmp_path, content, match):
    _png(tmp_path / "count" / "a1.png")
    (tmp_path / "count" / "a1.txt").write_text(content)
    with pytest.raises(DatasetFormatError, match=match):
        load_mme(tmp_path, categories=["count"])


def test_utility_missing_images_named(tmp_path):
    (tmp_path / "mm-vet.json").write_text(json.dumps({"v1_0": {"imagename": "v1_0.png", "question": "q",
                                                               "answer": "a"}}))
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"1 of 1 images not found.*v1_0.png"):
        load_suite("mm-vet", tmp_path)
