"""``python -m embxfer``: the command line."""

import sys

from embxfer.cli import main

sys.exit(main())
