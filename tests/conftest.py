"""Hypothesis profiles shared by every test.

``ci`` (the default) is derandomized: the examples are a function of the test alone, so a green
main stays green and a red one is reproducible. ``explore`` (``HYPOTHESIS_PROFILE=explore``) draws
fresh random examples on each run, for hunting new failures locally; keep any it finds as an
explicit ``@example`` or fixture.

Neither profile has a time limit: no per-example ``deadline`` and no ``too_slow`` health check.
Both measure wall-clock time, so on a loaded machine they fail a correct test (``Flaky``,
``DeadlineExceeded``, ``FailedHealthCheck``); pytest-timeout guards against a real hang.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_UNTIMED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, **_UNTIMED)
settings.register_profile("explore", derandomize=False, print_blob=True, **_UNTIMED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
