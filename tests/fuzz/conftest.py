"""Hypothesis profiles for the fuzz tests.

"ci" (the default) keeps every test in tests/fuzz short, so the directory runs in
well under a minute inside `make test`; "long" (`HYPOTHESIS_PROFILE=long`, what
`make fuzz` uses) multiplies every budget by `LONG_FACTOR` (see budget.py).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                              HealthCheck.function_scoped_fixture],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=50, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("long", max_examples=2000, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
