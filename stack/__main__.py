"""`python -m stack` is `xpemu`."""

import sys

from .cli import main

sys.exit(main())
