"""``python -m chaos``: the simulator's command line (``sim``, ``mutants``)."""

from chaos.cli import main

raise SystemExit(main())
