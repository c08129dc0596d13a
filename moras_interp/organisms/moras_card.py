"""The "MoRAS" section of the organism's model card: MoRAS vs baselines on held-out toy scenes.

    python -m moras_interp.organisms.moras_card --card MODEL_CARD.md [--n 20] [--calibration-n 20] [--out out/moras-card]

Runs the evaluation runner (``none, moras, fixed, adashield, ecso``) on ``n`` unsafe + ``n`` safe held-out
scenes, with the prototype from the toy harmful list and (x0, k) fitted on the organism's calibration stream,
then adds the equal-ASR comparison (smallest fixed r on a 0.1 grid whose attack success is no worse than
MoRAS's) and merges the section into the card (other sections are kept).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from moras_interp.eval.judge import KeywordJudge
from moras_interp.eval.stats import Rate
from moras_interp.moras.baselines import FixedSteering
from moras_interp.moras.evaluate import EvalResult, evaluate
from moras_interp.moras.methods import TOY_ECSO_CAPTION_PROMPT, MoRASSetup, build_methods, prepare_moras
from moras_interp.moras.report import markdown_table
from moras_interp.organisms.examples import toy_examples


def matched_fixed_r(model: Any, setup: MoRASSetup, images: list[Any], questions: list[str], target_asr: float, *,
                    max_new_tokens: int, grid: np.ndarray | None = None) -> tuple[float | None, list[tuple[float, float]]]:
    """Smallest r on ``grid`` (default 0.1…1.0) whose ASR on the given unsafe queries is ≤ ``target_asr``;
    returns (r or None, [(r, ASR) tried])."""
    judge, tried = KeywordJudge(), []
    for r in np.round(np.arange(0.1, 1.01, 0.1), 2) if grid is None else grid:
        tr = FixedSteering(model, setup.prototype, float(r)).run(images, questions, max_new_tokens=max_new_tokens,
                                                                 batch_size=len(questions), progress=False)
        asr = 1.0 - float(np.mean(judge([t.answer for t in tr])))
        tried.append((float(r), asr))
        if asr <= target_asr:
            return float(r), tried
    return None, tried


def section(res: EvalResult, setup: MoRASSetup, matched: tuple[float | None, float | None], n: int,
            n_cal: int, max_new_tokens: int) -> str:
    """Markdown body of the section."""
    c = setup.calibration
    r, over = matched
    lines = [
        f"Held-out toy scenes ({n} unsafe + {n} safe single-object image requests, `toy_examples(split='eval')`), "
        f"greedy, {max_new_tokens} new tokens, keyword refusal judge; `moras-interp moras --data toy` reproduces "
        "the table. Prototype: the 50 text-only requests of the organism's own `harmful_requests.txt` (N = 3); "
        f"calibration: official recipe on {n_cal} + {n_cal} scenes of the separate 'calib' stream → x0 = {c.x0:.3f}, "
        f"k = {c.k:.2f} (AUROC {c.auroc:.3f}, TPR {c.tpr:.2f} / FPR {c.fpr:.2f} at r ≥ 0.5). `fixed` uses r = "
        f"{setup.fixed_r:.3f} ({setup.fixed_r_rule}).", "", markdown_table(res.summary), "",
        "With Wilson 95 % intervals (k/n): " + "; ".join(
            f"**{m}** ASR {Rate(round(row['asr'] * n), n).fmt()}, over-refusal {Rate(round(row['over_refusal'] * n), n).fmt()}"
            for m, row in res.summary.set_index("method").iterrows()) + "."]
    if r is not None and over is not None:
        lines.append(f"Equal-ASR comparison: the smallest fixed r (0.1 grid) whose attack success on the same unsafe "
                     f"queries is no worse than MoRAS's is r = {r:.1f}; its over-refusal on the safe queries is "
                     f"{over:.2f} vs MoRAS's {res.summary.set_index('method').loc['moras', 'over_refusal']:.2f}.")
    lines.append("\nMoRAS over-refusal comes from stage-1 perception errors (a look-alike read as a hazard gets "
                 "r ≈ 1); fixed steering refuses every query once r is large enough to stop the attacks.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the MoRAS section of the organism's model card.")
    ap.add_argument("--card", default="MODEL_CARD.md")
    ap.add_argument("--out", default="out/moras-card", help="evaluation folder (resumed if present)")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--calibration-n", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from moras_interp.models.loading import load_model
    from moras_interp.organisms.card import write_card

    model = load_model("toy-llava")
    setup = prepare_moras(model, calibration=toy_examples(a.calibration_n, a.calibration_n, a.seed, split="calib"),
                          out=Path(a.out), batch_size=32)
    methods = build_methods(model, ["none", "moras", "fixed", "adashield", "ecso"], setup,
                            ecso_caption_prompt=TOY_ECSO_CAPTION_PROMPT)
    exs = toy_examples(a.n, a.n, a.seed)
    res = evaluate(exs, methods, a.out, batch_size=20, max_new_tokens=a.max_new_tokens)
    asr_moras = float(res.summary.set_index("method").loc["moras", "asr"])
    unsafe = [e for e in exs if e.label == "unsafe"]
    safe = [e for e in exs if e.label == "safe"]
    r, _ = matched_fixed_r(model, setup, [e.image for e in unsafe], [e.text for e in unsafe], asr_moras,
                           max_new_tokens=a.max_new_tokens)
    over = None
    if r is not None:
        tr = FixedSteering(model, setup.prototype, r).run([e.image for e in safe], [e.text for e in safe],
                                                          max_new_tokens=a.max_new_tokens, progress=False)
        over = float(np.mean(KeywordJudge()([t.answer for t in tr])))
    body = section(res, setup, (r, over), a.n, a.calibration_n, a.max_new_tokens)
    write_card(a.card, {"MoRAS": body}, merge=True)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
