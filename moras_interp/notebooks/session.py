"""What every project notebook does first, in one call: :func:`setup` returns a :class:`Session`.

    nb = setup(ORGANISM, model=MODEL, device=DEVICE, dtype=DTYPE, data=DATA, n=N, figures=FIGURES)
    model, FIGURES, RUNS, export = nb.model, nb.figures, nb.runs, nb.export
    unsafe, safe = nb.image_queries()        # notebooks 01, 02
    calib, evals = nb.examples()             # notebooks 03, 04

``organism`` names a shipped model organism (``"toy-llava"``; :data:`ORGANISM_DATA` lists those whose held-out
data the notebooks know): its weights are the model unless ``model`` names another one, and with ``data=None``
its held-out scenes are the data. A relative ``figures`` folder is resolved against the running notebook's own
folder (:func:`relative_to_notebook`), whatever the kernel's working directory.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from moras_interp.models.mllm import MLLM

ORGANISM_DATA = ("toy-llava", "toy-llava-2")
"""Organisms whose held-out queries :meth:`Session.image_queries` / :meth:`Session.examples` can draw."""


def notebook_dir() -> Path:
    """Folder of the running notebook.

    Read from ``JPY_SESSION_NAME`` (set by Jupyter server and by :func:`~moras_interp.notebooks.execute` for the
    kernel it starts), then VS Code's ``__vsc_ipynb_file__``; otherwise the working directory (where Jupyter
    starts kernels).
    """
    session = os.environ.get("JPY_SESSION_NAME")
    if session and Path(session).is_absolute():
        return Path(session).parent
    try:
        from IPython import get_ipython

        vsc = (get_ipython().user_ns if get_ipython() is not None else {}).get("__vsc_ipynb_file__")
    except ImportError:
        vsc = None
    return Path(vsc).parent if vsc else Path.cwd()


def relative_to_notebook(path: str | Path) -> Path:
    """``path`` made absolute: a relative path is taken relative to the running notebook's folder."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() else notebook_dir() / p).resolve()


_QUIET: list[Any] = []


def quiet() -> None:
    """For the project's notebooks: no transformers "Loading weights" bars or log lines and none of the known
    harmless warnings (:func:`moras_interp.progress.quiet_third_party`) for the rest of this kernel session.
    Our own progress bars stay on (``progress=``). Calling it again does nothing."""
    if not _QUIET:
        from moras_interp.progress import quiet_third_party

        ctx = quiet_third_party()
        ctx.__enter__()
        _QUIET.append(ctx)
        # restore the settings at exit, while imports still work (not when the generator is collected at
        # interpreter shutdown, which printed an ImportError traceback)
        atexit.register(ctx.__exit__, None, None, None)


def unquiet() -> None:
    """Undo :func:`quiet` now (third-party bars, log level and warning filters restored); e.g. when a script or
    test process goes on after a notebook session. Does nothing when :func:`quiet` is not in force."""
    while _QUIET:
        ctx = _QUIET.pop()
        atexit.unregister(ctx.__exit__)
        ctx.__exit__(None, None, None)


@dataclass
class Session:
    """A notebook's model, folders, figure export and data, made by :func:`setup`.

    Attributes:
        organism: the organism whose held-out data is used when ``data`` is None.
        model: the loaded model (the organism's weights unless another model was named).
        figures: absolute folder the figures go to (created).
        runs: absolute folder of this notebook's cached / resumable results: ``<figures>/../runs/<model>-<data>-N<n>``.
        data: a JSONL/CSV file of examples, or None for the organism's held-out scenes.
        n: examples per class.
        plotlyjs: how exported HTML gets plotly.js (True = inlined, ``"cdn"``, ``"directory"``).
    """

    organism: str
    model: MLLM
    figures: Path
    runs: Path
    data: str | None
    n: int
    plotlyjs: bool | str = True

    def export(self, fig: Any, name: str) -> Any:
        """Write ``fig`` as ``<figures>/<name>.png`` and ``.html`` (plotly.js as ``plotlyjs`` says); returns it."""
        from moras_interp.viz import save_html, save_png

        save_png(fig, self.figures / f"{name}.png")
        save_html(fig, self.figures / f"{name}.html", include_plotlyjs=self.plotlyjs)
        return fig

    def _organism_data(self) -> str:
        if self.organism not in ORGANISM_DATA:
            raise ValueError(f"No held-out data known for organism {self.organism!r} (known: "
                             f"{', '.join(ORGANISM_DATA)}); pass DATA = a JSONL/CSV file of examples.")
        return self.organism

    def image_queries(self, seed: int = 1) -> tuple[list[Any], list[Any]]:
        """(unsafe, safe): up to ``n`` image queries each, with ``.image``, ``.question``, ``.label``, ``.box``
        (PIL image, str, "unsafe"/"safe", pixel box or None) — the organism's held-out scenes (stream
        ``seed``) or the rows of ``data`` (labels normalised by the loader)."""
        if self.data is None:
            from moras_interp.organisms.honest_card import queries

            return queries(self._organism_data(), self.n, seed)
        from moras_interp.eval.datasets import load_csv, load_jsonl

        load = load_jsonl if str(self.data).endswith(".jsonl") else load_csv
        rows = [SimpleNamespace(image=r.load_image(), question=r.text, label=r.label, box=r.region)
                for r in load(self.data)]
        return [r for r in rows if r.label == "unsafe"][: self.n], [r for r in rows if r.label == "safe"][: self.n]

    def text_queries(self, seed: int = 0) -> tuple[list[Any], list[Any]]:
        """(unsafe, safe): ``n`` text-only requests each (``.question``, ``.label``; no image) in the
        organism's vocabulary — the phrasings it was trained to refuse / answer."""
        import numpy as np

        from moras_interp.organisms import tasks, toy2

        if self._organism_data() == "toy-llava":
            return tasks.harmful_text_queries(self.n, seed), tasks.benign_text_queries(self.n, seed)
        rng = np.random.default_rng(seed)
        pick = [toy2.text_queries(u, held_out=False) for u in (True, False)]
        return tuple([q[int(i)] for i in rng.permutation(len(q))[: self.n]] for q in pick)  # type: ignore[return-value]

    def examples(self, seed: int = 0) -> tuple[list[Any], list[Any]]:
        """(calibration, evaluation) :class:`~moras_interp.eval.datasets.Example` lists: ``n`` per class each
        from the organism's disjoint "calib" and "eval" streams, or the two halves of ``data``."""
        if self.data is not None:
            from moras_interp.moras import load_examples

            rows = load_examples(self.data)
            return rows[: len(rows) // 2], rows[len(rows) // 2:]
        from moras_interp.organisms import toy_examples
        from moras_interp.organisms.honest_card import queries

        out = []
        for split in ("calib", "eval"):
            if self._organism_data() == "toy-llava":
                out.append(toy_examples(self.n, self.n, seed, split))
                continue
            unsafe, safe = queries(self.organism, self.n, seed, split=split)
            pairs = [(q, f"{self.organism}-{split}-{lab}-{i}") for i in range(self.n)
                     for q, lab in ((unsafe[i], "unsafe"), (safe[i], "safe"))]  # alternating, as toy_examples
            out.append([q.to_example(id, source=f"{self.organism}-{split}-{seed}") for q, id in pairs])
        return out[0], out[1]

    @property
    def ecso_caption_prompt(self) -> str:
        """The ECSO baseline's caption prompt: toy-llava only knows the MoRAS stage-1 prompt; others the paper's."""
        from moras_interp.moras.methods import TOY_ECSO_CAPTION_PROMPT
        from moras_interp.moras.prompts import ECSO_CAPTION_PROMPT

        return TOY_ECSO_CAPTION_PROMPT if Path(str(self.model.model_id)).name == "toy-llava" else ECSO_CAPTION_PROMPT


def setup(organism: str = "toy-llava", *, model: str | None = None, device: str | None = None,
          dtype: str | None = None, data: str | None = None, n: int = 40, figures: str | Path = "../figures",
          plotlyjs: bool | str = True, quiet_output: bool = True) -> Session:
    """Load the model, resolve the folders and silence third-party output (:func:`quiet`) for a notebook.

    ``organism``: shipped organism (weights and default data); ``model``: an HF id or local path to use instead
    of the organism's weights (its data is still the organism's unless ``data`` is given); ``figures``: a
    relative path is relative to the running notebook.
    """
    import moras_interp as mi

    if quiet_output:
        quiet()
    if n < 1:
        raise ValueError(f"N (examples per class) must be ≥ 1, got {n}.")
    fig_dir = relative_to_notebook(figures)
    fig_dir.mkdir(parents=True, exist_ok=True)
    name = model if model is not None else organism
    loaded = mi.load_model(name, device=device, dtype=dtype)
    runs = fig_dir.parent / "runs" / f"{Path(str(name)).name}-{Path(str(data)).stem}-N{n}"
    return Session(organism, loaded, fig_dir, runs, None if data is None else str(data), n, plotlyjs)


__all__ = ["ORGANISM_DATA", "Session", "notebook_dir", "quiet", "relative_to_notebook", "setup",
           "unquiet"]
