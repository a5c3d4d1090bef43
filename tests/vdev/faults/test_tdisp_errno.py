"""The errno of a failed IDE_KM / TDISP step (tsm.errors.errno_of), what vtsm hands
to user space from a write to tdi_lock / tdi_start or tsm/connect: each device refusal
injected by vdev.faults into the real device, seen by the TSM model over the DOE mailbox
(guest-tests/test_guest_tdisp_faults.py drives the same steps from a Linux guest)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tdisp.codes import ErrorCode, TdiState
from tdisp.errors import IdeKmStatusError, TdispErrorResponse
from tests.vdev.faults.test_message_faults import Rig
from tsm.errors import NotConnected, TdiNotRunning, TsmStateError, errno_of


def test_tdisp_busy_to_lock_is_ebusy(state_dir: Path) -> None:
    rig = Rig(state_dir, "error:LOCK_INTERFACE_REQUEST:code=Busy")
    tsm = rig.tsm()
    results = rig.to_run(tsm)
    assert [r.ok for r in results] == [True, False]
    assert "TDISP_ERROR BUSY" in results[1].reason and results[1].errno == -errno.EBUSY
    rig.run(tsm.disconnect())
    rig.clean_run()


def test_invalid_nonce_at_start_is_eacces(state_dir: Path) -> None:
    rig = Rig(state_dir, "wrong_nonce")
    tsm = rig.tsm()
    results = rig.to_run(tsm)
    assert [r.ok for r in results] == [True, True, True, False]
    assert "INVALID_NONCE" in results[3].reason and results[3].errno == -errno.EACCES
    assert rig.device.tdi.state == TdiState.CONFIG_LOCKED
    rig.run(tsm.disconnect())
    rig.clean_run()


def test_start_of_a_tdi_in_error_stays_eio(state_dir: Path) -> None:
    rig = Rig(state_dir, "tdi_error:START_INTERFACE_REQUEST")
    tsm = rig.tsm()
    results = rig.to_run(tsm)
    assert "INVALID_INTERFACE_STATE" in results[3].reason and results[3].errno == -errno.EIO
    assert rig.device.tdi.state == TdiState.ERROR
    rig.run(tsm.disconnect())
    rig.clean_run()


def test_kp_ack_failure_status_stays_eio(state_dir: Path) -> None:
    rig = Rig(state_dir, "error:KEY_PROG:code=UNSUPPORTED_PORT_INDEX")
    done = rig.run(rig.tsm().connect())
    assert not done.ok and "KP_ACK status UNSUPPORTED_PORT_INDEX" in done.reason
    assert done.errno == -errno.EIO
    rig.clean_run()


@pytest.mark.parametrize("code, expected", [
    (ErrorCode.BUSY, -errno.EBUSY),
    (ErrorCode.INVALID_NONCE, -errno.EACCES),
    (ErrorCode.INVALID_INTERFACE_STATE, -errno.EIO),
    (ErrorCode.UNSPECIFIED, -errno.EIO),
    (ErrorCode.INVALID_REQUEST, -errno.EIO),
])
def test_tdisp_error_codes(code: ErrorCode, expected: int) -> None:
    assert errno_of(TdispErrorResponse(code, code.name, 0, b"")) == expected
    assert errno_of(IdeKmStatusError(2, "UNSUPPORTED_PORT_INDEX")) == -errno.EIO


def test_stale_state_after_start_is_eproto(state_dir: Path) -> None:
    # The second GET_DEVICE_INTERFACE_STATE (after START) answered with the first one
    # (before LOCK): START was acknowledged, the device says CONFIG_UNLOCKED.
    rig = Rig(state_dir, "replay:GET_DEVICE_INTERFACE_STATE:nth=2")
    tsm = rig.tsm()
    results = rig.to_run(tsm)
    assert [r.ok for r in results] == [True, True, True, False]
    assert "CONFIG_UNLOCKED after START" in results[3].reason
    assert results[3].errno == -errno.EPROTO
    assert rig.device.tdi.state == TdiState.RUN  # the device did start
    # The TSM now believes CONFIG_UNLOCKED, so only an explicit STOP (vtsm's unbind)
    # brings the device's TDI back before the session ends.
    assert rig.run(tsm.stop(0)).ok
    assert rig.device.tdi.state == TdiState.CONFIG_UNLOCKED
    rig.run(tsm.disconnect())
    rig.clean_run()


@pytest.mark.parametrize("state, expected", [
    ("CONFIG_UNLOCKED", -errno.EPROTO), ("CONFIG_LOCKED", -errno.EPROTO),
    ("ERROR", -errno.EIO),
])
def test_state_after_start(state: str, expected: int) -> None:
    after = TdiNotRunning(f"TDI 01:00.0 in {state} after START", TdiState[state])
    assert errno_of(after) == expected
    assert errno_of(NotConnected("not connected (run connect first)")) == -errno.ENOTCONN
    assert errno_of(TsmStateError("TDI 01:00.0: no accepted interface report "
                                  "(run report first)")) == -errno.EINVAL
