"""The organisms' held-out examples as the project's one record: the ``"toy"`` (toy-llava) and ``"toy2"``
(toy-llava-2) data sources.

Importing this module (``moras_interp.organisms`` does) registers ``"toy"`` and ``"toy2"`` with
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


def toy2_examples(n_unsafe: int = 20, n_safe: int = 20, seed: int = 0, split: str = "eval") -> list[Example]:
    """``toy-llava-2``'s held-out single-object image requests (held-out phrasings and image references only,
    :func:`moras_interp.organisms.toy2.image_queries`), alternating unsafe / safe like :func:`toy_examples`."""
    from moras_interp.organisms import toy2

    unsafe = toy2.image_queries(n_unsafe, seed, unsafe=True, split=split)
    safe = toy2.image_queries(n_safe, seed, unsafe=False, split=split)
    out: list[Example] = []
    for i in range(max(n_unsafe, n_safe)):
        for q, lab in ((unsafe, "unsafe"), (safe, "safe")):
            if i < len(q):
                out.append(q[i].to_example(f"toy2-{split}-{lab}-{i}", source=f"toy2-{split}-{seed}"))
    return out


def _toy_source(n: int, *, seed: int = 0, split: str = "eval") -> list[Example]:
    return toy_examples(n, n, seed, split)


def _toy2_source(n: int, *, seed: int = 0, split: str = "eval") -> list[Example]:
    return toy2_examples(n, n, seed, split)


ORGANISM_DATA: dict[str, str] = {"toy-llava": "toy", "toy-llava-2": "toy2"}
"""Shipped organism → the data source of its held-out (and, with ``split="calib"``, calibration) examples."""

register_data_source("toy", _toy_source)
register_data_source("toy2", _toy2_source)

__all__ = ["ORGANISM_DATA", "toy2_examples", "toy_examples"]
