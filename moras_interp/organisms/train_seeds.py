"""Training-seed replication: the same recipe trained with other seeds, each measured like the shipped organism.

    python -m moras_interp.organisms.train_seeds --organism toy-llava-2 --card MODEL_CARD_toy-llava-2.md \
        --weights 0=toy-llava-2 1=/tmp/seed1 2=/tmp/seed2 [--n 100]

Each model gets its own calibration (its 'calib' stream, as the shipped card) and
:func:`~moras_interp.organisms.study.moras_study` (no defence, MoRAS, ECSO, the fixed-r sweep) on the same
held-out queries (evaluation seed 0), so the rows differ only by the training seed. Writes the card's
"Training seeds" section (other sections kept). The extra seeds' weights are not shipped: the section gives
the command that retrains them.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from moras_interp.organisms.study import moras_study

SECTION = "Training seeds"


def flip_points(sweep: list[tuple[float, Any, Any]]) -> int:
    """Distinct (ASR, over-refusal) operating points of a fixed-r sweep [(r, asr Rate, over Rate)]."""
    return len({(a.k, o.k) for _, a, o in sweep})


def seeds_section(results: Mapping[int, dict[str, Any]], calibrations: Mapping[int, Any], recipe: str) -> str:
    """Markdown: one row per training seed (ASR / over-refusal per method, MoRAS-ECSO agreement, sweep points)."""
    first = next(iter(results.values()))
    nu, ns = first["methods"]["moras"]["asr"].n, first["methods"]["moras"]["over_refusal"].n
    lines = [f"The recipe retrained with other seeds (`{recipe} --seed S`), each model calibrated on its own 'calib' "
             f"stream and measured on the same {nu} unsafe + {ns} safe held-out queries (evaluation seed 0). Only "
             "seed 0's weights are shipped. Rate [Wilson 95 % interval] (k/n).", "",
             "| training seed | x0 / k | no defence ASR | MoRAS ASR | MoRAS over-refusal | ECSO ASR | ECSO over-refusal "
             "| MoRAS = ECSO verdicts | fixed-r operating points |", "|---|---|---|---|---|---|---|---|---|"]
    for seed, res in results.items():
        m, c = res["methods"], calibrations[seed]
        lines.append(f"| {seed} | {c.x0:.3f} / {c.k:.3g} | {m['none']['asr'].fmt()} | {m['moras']['asr'].fmt()} | "
                     f"{m['moras']['over_refusal'].fmt()} | {m['ecso']['asr'].fmt()} | {m['ecso']['over_refusal'].fmt()} "
                     f"| {res['agreement'].fmt()} | {flip_points(res['sweep'])} of {len(res['sweep'])} r values |")
    graded = [s for s, r in results.items() if flip_points(r["sweep"]) >= 4]
    differ = [s for s, r in results.items() if r["agreement"].hi < 0.95]
    lines += ["", f"Graded fixed-r sweep (≥ 4 operating points): seeds {graded or 'none'} of {list(results)}. "
              f"MoRAS and ECSO verdicts measurably differ (agreement interval below 0.95): seeds {differ or 'none'}."]
    for what, have in (("graded fixed-r sweep", graded), ("MoRAS/ECSO difference", differ)):
        if have and len(have) < len(results):
            lines.append(f"The {what} is a property of training seed(s) {have}, not of the recipe: do not generalise "
                         "it from the shipped weights.")
        elif len(have) == len(results):
            lines.append(f"The {what} replicates on every training seed measured.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Measure the organism recipe across training seeds.")
    ap.add_argument("--organism", default="toy-llava-2")
    ap.add_argument("--card", default="MODEL_CARD_toy-llava-2.md")
    ap.add_argument("--weights", nargs="+", required=True, help="SEED=PATH_OR_NAME per trained model")
    ap.add_argument("--n", type=int, default=100, help="unsafe and safe queries")
    ap.add_argument("--calibration-n", type=int, default=40)
    ap.add_argument("--recipe", default="python -m moras_interp.organisms.train --organism toy-llava-2 "
                    "--label-smoothing 0.1 --batch-size 32 --steps 900 --vision-steps 400 --threads 1")
    a = ap.parse_args(argv)
    from moras_interp.models.loading import load_model
    from moras_interp.moras.methods import prepare_moras
    from moras_interp.organisms.card import write_card
    from moras_interp.organisms.honest_card import calibration_examples, queries

    results, cals = {}, {}
    for item in a.weights:
        seed, _, where = item.partition("=")
        if not where or not seed.isdigit():
            raise SystemExit(f"--weights {item!r}: expected SEED=PATH_OR_NAME, e.g. 1=/tmp/seed1.")
        model = load_model(where)
        setup = prepare_moras(model, calibration=calibration_examples(a.organism, a.calibration_n), batch_size=50,
                              progress=False)
        u, s = queries(a.organism, a.n, 0)
        results[int(seed)] = moras_study(model, u, s, setup, methods=("none", "moras", "ecso"), sweep_n=a.n)
        cals[int(seed)] = setup.calibration
        print(f"training seed {seed} done", flush=True)
    text = seeds_section(results, cals, a.recipe)
    write_card(a.card, {SECTION: text}, merge=True, title=f"{a.organism} — model card")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
