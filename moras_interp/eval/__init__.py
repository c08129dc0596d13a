"""Evaluation: the example record and label rule, refusal judges, safety/utility metrics, benchmark loaders and
FigStep-style typographic images."""

from moras_interp.eval.benchmark_files import FIGSTEP_PROMPT, load_figstep, load_mm_safetybench, load_xstest
from moras_interp.eval.datasets import DatasetFormatError, Example, load_csv, load_jsonl
from moras_interp.eval.judge import (
    JUDGES,
    AnyJudge,
    CallableJudge,
    KeywordJudge,
    RefusalJudge,
    XSTestJudge,
    make_judge,
    normalise_text,
)
from moras_interp.eval.labels import gold_answer, parse_label, safety_label
from moras_interp.eval.metrics import (
    attack_success_rate,
    contains_accuracy,
    exact_match_accuracy,
    latency_summary,
    over_refusal_rate,
    risk_auroc,
    summarise,
)
from moras_interp.eval.model_judge import ModelJudge
from moras_interp.eval.typographic import figstep_text, load_font, text_box, typographic_image

__all__ = ["FIGSTEP_PROMPT", "JUDGES", "AnyJudge", "CallableJudge", "DatasetFormatError", "Example", "KeywordJudge",
           "ModelJudge", "RefusalJudge", "XSTestJudge", "attack_success_rate", "contains_accuracy",
           "exact_match_accuracy", "figstep_text", "gold_answer", "latency_summary", "load_csv", "load_figstep",
           "load_font", "load_jsonl", "load_mm_safetybench", "load_xstest", "make_judge", "normalise_text",
           "over_refusal_rate", "parse_label", "risk_auroc", "safety_label", "summarise", "text_box",
           "typographic_image"]
