"""Per-test example budgets, scaled by the active hypothesis profile."""

from __future__ import annotations

import os

from hypothesis import settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
LONG_FACTOR = 40


def examples(ci: int) -> settings:
    """Settings with `ci` examples under the ci profile, `ci * LONG_FACTOR` under long."""
    return settings(max_examples=ci * LONG_FACTOR if PROFILE == "long" else ci)
