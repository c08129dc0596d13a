"""``python -m moras_interp.notebooks [NAMES] [--figures DIR]``: run the notebooks (regenerates ``figures/``)."""

from moras_interp.notebooks.run import main

raise SystemExit(main())
