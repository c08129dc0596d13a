"""``moras-interp organism {train,card,scene}``: retrain the shipped model organism, regenerate its model card,
or draw a scene of its world.

``organism scene --out scene.png`` writes a 48×48 scene with a hazard (``--objects bomb,cup`` chooses the
objects, ``--seed`` the layout, colours and noise) and prints each object's box in pixels, ready for the
attention command: ``moras-interp attention --image scene.png --box X0 Y0 X1 Y1 ...``.
"""

from __future__ import annotations

import argparse

from moras_interp.atomic import atomic_write_bytes


def scene_parser() -> argparse.ArgumentParser:
    """Parser of ``moras-interp organism scene`` (its own, as the train and card actions have theirs)."""
    from moras_interp.cli import HelpFormatter, _Parser
    from moras_interp.organisms.world import CLASSES, HAZARDS

    p = _Parser(prog="moras-interp organism scene", formatter_class=HelpFormatter,
                description="Draw a scene of the organism's world (48×48 px, objects on a 3×3 grid) into a PNG and "
                            "print each object's box (x0 y0 x1 y1, pixels, x1/y1 exclusive): the input of the "
                            "attention examples. Hazards: " + ", ".join(HAZARDS) + "; every class: "
                            + ", ".join(CLASSES) + ".")
    p.add_argument("--out", default="scene.png", help="PNG file to write")
    p.add_argument("--objects", default=None,
                   help="comma-separated classes, 1 to 3, distinct (default: one random hazard)")
    p.add_argument("--seed", type=int, default=0, help="draws the layout, colour jitter and pixel noise")
    return p


def _scene(argv: list[str]) -> int:
    import io

    import numpy as np

    from moras_interp.organisms.world import CLASSES, GRID, HAZARDS, sample_scene

    a = scene_parser().parse_args(argv)
    if a.objects is None:
        names = [str(np.random.default_rng(a.seed).choice(HAZARDS))]
    else:
        names = [n.strip() for n in a.objects.split(",") if n.strip()]
        bad = [n for n in names if n not in CLASSES]
        if bad or not 1 <= len(names) <= GRID * GRID // 3 or len(set(names)) != len(names):
            raise ValueError(f"--objects {a.objects!r}: give 1 to 3 distinct classes from {', '.join(CLASSES)}"
                             + (f" ({', '.join(bad)} unknown)" if bad else ""))
    scene = sample_scene(np.random.default_rng(a.seed), names=names)
    buf = io.BytesIO()
    scene.image.save(buf, format="PNG")
    atomic_write_bytes(a.out, buf.getvalue())
    print(f"wrote {a.out} ({scene.image.width}×{scene.image.height})")
    for o in scene.objects:
        print(f"{o.name:<8} {'hazard' if o.is_hazard else 'benign':<7} box {' '.join(map(str, o.box))}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.action == "train":
        from moras_interp.organisms.train import main

        return main(args.rest)
    if args.action == "scene":
        return _scene(args.rest)
    from moras_interp.organisms.card import main as card_main

    return int(card_main(args.rest) or 0)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``organism`` sub-command (arguments after the action are passed through)."""
    p = sub.add_parser("organism", help="retrain the toy-llava organism (train --out DIR), rebuild its card, or "
                                        "draw a scene (scene --out scene.png)", add_help=True)
    p.add_argument("action", choices=["train", "card", "scene"],
                   help="train, card or scene; `moras-interp organism ACTION --help` lists its options")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the action, e.g. --out DIR --steps 800")
    p.set_defaults(fn=_run)
