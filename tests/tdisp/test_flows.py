"""Requester flows driven against the device-side engines."""

from __future__ import annotations

import pytest

from tdisp.codes import TdiState
from tdisp.errors import TdispErrorResponse
from tdisp.flows import drive, ide_key_setup, tdisp_connect
from tests.helpers.tdisp_rig import MMIO_OFFSET, SESSION, STREAM, TDI_ID, make_rig


def test_ide_then_tdisp_connect() -> None:
    rig = make_rig()
    ide = drive(ide_key_setup(STREAM), lambda p: rig.send(p, SESSION))
    assert len(ide.keys) == 6 and ide.query.port_index == 0
    assert {k for k, _ in rig.target.keys.values()} == set(ide.keys.values())
    assert all(k.hex() not in repr(ide) for k in ide.keys.values())
    conn = drive(
        tdisp_connect(TDI_ID, STREAM, mmio_reporting_offset=MMIO_OFFSET, report_chunk=48),
        lambda p: rig.send(p, SESSION),
    )
    assert conn.state is TdiState.RUN and conn.report_portions == 3
    assert conn.report == rig.tdisp.tdi(TDI_ID).report
    assert rig.state() == TdiState.RUN


def test_connect_without_keys_fails_with_decoded_error() -> None:
    rig = make_rig()
    with pytest.raises(TdispErrorResponse) as exc:
        drive(tdisp_connect(TDI_ID, STREAM), lambda p: rig.send(p, SESSION))
    assert exc.value.name == "INVALID_REQUEST"


def test_connect_lock_only() -> None:
    rig = make_rig()
    drive(ide_key_setup(STREAM), lambda p: rig.send(p, SESSION))
    conn = drive(tdisp_connect(TDI_ID, STREAM, start=False), lambda p: rig.send(p, SESSION))
    assert conn.state is TdiState.CONFIG_LOCKED
