"""Fixtures for the IDE_KM / TDISP engine tests; helpers live in tdisp_rig.py."""

from __future__ import annotations

import pytest

from tests.helpers.tdisp_rig import Rig, make_rig


@pytest.fixture
def rig() -> Rig:
    return make_rig()
