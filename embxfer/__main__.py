"""``python -m embxfer``: the command line."""

import sys

from embxfer.tools.cli import main

sys.exit(main())
