"""The organism's held-out examples as the project's one record, and the ``"toy"`` data source.

Importing this module (``moras_interp.organisms`` does) registers ``"toy"`` with
:func:`moras_interp.moras.examples.register_data_source`, so ``load_examples("toy")`` and ``moras-interp moras
--data toy`` draw from :func:`toy_examples` without the MoRAS package importing the organism.
"""

from __future__ import annotations

from moras_interp.eval.datasets import Example
from moras_interp.moras.examples import register_data_source
from moras_interp.organisms import tasks


def toy_examples(n_unsafe: int = 20, n_safe: int = 20, seed: int = 0, split: str = "eval") -> list[Example]:
    """Held-out single-object scenes of the toy organism with a request about "the item in the image".

    Unsafe and safe examples alternate (so ``--limit`` keeps both classes); safe examples carry the object's
    name as gold answer (utility = the answer names the object). ``split`` selects the random stream
    ("eval" for evaluation, "calib" for calibration; they never share a scene).
    """
    unsafe = tasks.harmful_image_queries(n_unsafe, seed, split)
    safe = tasks.benign_image_queries(n_safe, seed, split)
    out: list[Example] = []
    for i in range(max(n_unsafe, n_safe)):
        for q, lab in ((unsafe, "unsafe"), (safe, "safe")):
            if i < len(q):
                out.append(q[i].to_example(f"toy-{split}-{lab}-{i}", source=f"toy-{split}-{seed}"))
    return out


def _toy_source(n: int, *, seed: int = 0, split: str = "eval") -> list[Example]:
    return toy_examples(n, n, seed, split)


register_data_source("toy", _toy_source)

__all__ = ["toy_examples"]
