"""Progress bars and third-party noise, in one place.

:data:`tqdm` is the progress-bar class every loop of moras_interp uses: tqdm's notebook widget when running in
Jupyter with ``ipywidgets`` installed (the ``[jupyter]`` extra), the plain text bar everywhere else. tqdm.auto
without ipywidgets prints ``TqdmWarning: IProgress not found`` in every notebook and then falls back to the
same text bar; we make that choice without the warning (transformers imports tqdm.auto too, so the import below
is the first one and the fallback is decided once, silently, exactly as tqdm would decide it).

:func:`quiet_third_party` is for OUR entry points only (the ``moras-interp`` command, the notebooks): it turns
off transformers' "Loading weights" bars and its info/warning log lines and ignores the known harmless
warnings listed in :data:`HARMLESS_WARNINGS`, and restores everything on exit. Code that imports moras_interp
as a library keeps transformers' own settings.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

HAVE_IPYWIDGETS = importlib.util.find_spec("ipywidgets") is not None

if HAVE_IPYWIDGETS:
    from tqdm.auto import tqdm
else:
    from tqdm.std import TqdmWarning

    with warnings.catch_warnings():  # tqdm.auto would warn, then pick tqdm.std: pick it quietly
        warnings.simplefilter("ignore", TqdmWarning)
        import tqdm.auto
    from tqdm.std import tqdm

HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # nbclient / jupyter_client in headless runs: the kernel is local and the connection file private
    (r".*Kernel is running over TCP without encryption.*", Warning),
    (r".*IProgress not found.*", Warning),
)
"""(message regex, category) of warnings our entry points hide: each is about the environment, never a result."""


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silence transformers' (and huggingface_hub's) bars and log lines and the :data:`HARMLESS_WARNINGS` inside
    the block; restores the previous verbosity, bar state and warning filters on exit. Our own bars (:data:`tqdm`)
    are controlled by each function's ``progress=``.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            for message, category in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


__all__ = ["HARMLESS_WARNINGS", "HAVE_IPYWIDGETS", "quiet_third_party", "tqdm"]
