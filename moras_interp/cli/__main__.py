"""``python -m moras_interp.cli ...``: the same as the ``moras-interp`` console script."""

import sys

from moras_interp.cli import main

sys.exit(main())
