"""One identity directory for the fault tests (key generation is the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-identity")
