"""Fixtures of the conformance suite: one state directory for the session, so each
profile's identity is generated once."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance-state")
