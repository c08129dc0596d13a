"""The project's notebooks: one setup call for their shared first cells, and a headless runner.

* :func:`setup` (:mod:`.session`): model, figure and run folders, figure export, the organism's data — what
  every notebook in ``notebooks/`` does first; ``ORGANISM`` (a parameter of each notebook) picks the organism.
* :func:`execute` / ``python -m moras_interp.notebooks`` (:mod:`.run`): run notebooks with parameters, the way
  ``figures/`` is regenerated and CI executes them.
"""

from moras_interp.notebooks.run import NOTEBOOKS, REPO, NotebookError, execute, main, read_notebook
from moras_interp.notebooks.session import (
    ORGANISM_DATA,
    Session,
    notebook_dir,
    quiet,
    relative_to_notebook,
    setup,
    unquiet,
)

__all__ = ["NOTEBOOKS", "ORGANISM_DATA", "REPO", "NotebookError", "Session", "execute", "main", "notebook_dir",
           "quiet", "read_notebook", "relative_to_notebook", "setup", "unquiet"]
