"""``python -m kdiff_differential``: the command line."""

import sys

from .cli import main

sys.exit(main())
