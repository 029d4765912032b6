"""``python -m chaos``: the simulator's command line (``sim``, ``mutants``)."""

import os
import sys

from chaos.cli import main

try:
    code = main()
except BrokenPipeError:  # output piped into `head` and the like: stop quietly
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 1
raise SystemExit(code)
