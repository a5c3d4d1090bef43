"""Fixtures shared across the test tree (helpers live in tests/helpers/)."""

from tests.helpers.full_captures import full_profile_captures
from tests.helpers.spdm_emu_server import emu, emu_mctp, emu_none, emu_state_dir

__all__ = ["emu", "emu_mctp", "emu_none", "emu_state_dir", "full_profile_captures"]
