"""Hypothesis profiles shared by every test.

``ci`` (the default) is derandomized: the examples are a function of the test alone, so a green
main stays green and a red one is reproducible. ``explore`` (``HYPOTHESIS_PROFILE=explore``) draws
fresh random examples on each run, for hunting new failures locally; keep any it finds as an
explicit ``@example`` or fixture.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
