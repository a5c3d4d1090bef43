"""Mailbox protocol 1.1: LOCK carries the TDI's memory BARs as the guest sees them.

The records are validated by the device (malformed -> STATUS=ERROR, nothing started),
passed to the backend as `mmio=`, and with the real TSM model behind the mailbox they
become the lock's expected MMIO ranges: a report that disagrees is refused with -EACCES,
whether a REPORT or START (which reads the report when nobody did since LOCK) fetched
it, and START after a refused report with -EACCES too.  IN_LEN=0 keeps 1.0's unchecked
LOCK, and a 1.0 driver's stale IN_LEN (left from its last DOE response) is never read as LOCK data.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tdisp.codes import TdiState
from tdisp.interface_report import InterfaceReport
from tests.helpers.tsm_rig import EXPECTED, identity, make_device
from tests.vdev.tsm_mailbox.test_device import (
    CONNECT_SCRIPT,
    assert_still_works,
    endpoint_doe,
    make,
)
from tsm import mailbox_backend
from tsm.mailbox_backend import OperationBackend
from tsm.mailbox_protocol import (
    LOCK_BAR_RECORD_SIZE,
    LOCK_BARS_MAX,
    Done,
    LockBar,
    LockBarRecord,
    LockDataError,
    Op,
    TargetFunction,
    build_lock_bars,
    parse_lock_bars,
)
from vdev.tsm_mailbox.backend import Script, ScriptedBackend
from vdev.tsm_mailbox.protocol import (
    LOCK_DATA_ERRORS,
    REG_IN_LEN,
    REG_VERSION,
    VERSION_LOCK_BARS,
    VERSION_TDI_STATE,
    ErrorCode,
    Status,
)

BARS = (LockBar(0, 0xFE00_0000, 0x1_0000), LockBar(2, 0xFD00_0000, 0x2000))
TARGET = TargetFunction(0, 1, 0)


def scripted() -> ScriptedBackend:
    return ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT], Op.LOCK: [Script((), Done(0, "locked"))]})


# ---- wire format ---------------------------------------------------------------------


def test_record_layout() -> None:
    assert LOCK_BAR_RECORD_SIZE == 24
    raw = build_lock_bars([LockBar(2, 0x1122_3344_5566_7788, 0x4000)])
    assert raw == (bytes([2]) + bytes(7) + (0x1122_3344_5566_7788).to_bytes(8, "little")
                   + (0x4000).to_bytes(8, "little"))
    rec = LockBarRecord.parse(raw)
    assert (rec.index, rec.base, rec.size) == (2, 0x1122_3344_5566_7788, 0x4000)
    assert parse_lock_bars(build_lock_bars(BARS)) == BARS
    assert parse_lock_bars(b"") == ()


def _reserved_set() -> bytes:
    raw = bytearray(build_lock_bars([LockBar(0, 0x1000, 0x1000)]))
    raw[3] = 1
    return bytes(raw)


BAD = [
    ("short", build_lock_bars(BARS)[:-1], ErrorCode.BAD_LENGTH, "not a whole number"),
    ("too many", build_lock_bars([LockBar(i % 6, 0x1000 * (i + 1), 0x1000) for i in range(7)]),
     ErrorCode.BAD_LENGTH, f"7 BAR records, at most {LOCK_BARS_MAX}"),
    ("duplicate", build_lock_bars([BARS[0], LockBar(0, 0xFC00_0000, 0x1000)]),
     ErrorCode.BAD_DATA, "BAR0 given twice"),
    ("index", build_lock_bars([LockBar(6, 0x1000, 0x1000)]), ErrorCode.BAD_DATA,
     "BAR index 6 is not 0..5"),
    ("zero size", build_lock_bars([LockBar(1, 0x1000, 0)]), ErrorCode.BAD_DATA, "size 0"),
    ("wraps", build_lock_bars([LockBar(0, (1 << 64) - 0x1000, 0x2000)]), ErrorCode.BAD_DATA,
     "wraps past 2^64"),
    ("reserved", _reserved_set(), ErrorCode.BAD_DATA, "reserved bytes not zero"),
]


@pytest.mark.parametrize(("name", "raw", "code", "text"), BAD, ids=[b[0] for b in BAD])
def test_parse_refuses_malformed_records(name: str, raw: bytes, code: ErrorCode,
                                         text: str) -> None:
    with pytest.raises(LockDataError) as exc:
        parse_lock_bars(raw)
    assert LOCK_DATA_ERRORS[type(exc.value)] == code and text in str(exc.value)


# ---- the device ----------------------------------------------------------------------


def test_version_is_1_2_with_lock_bars_since_1_1() -> None:
    _, drv, _ = make()
    assert drv.rd32(REG_VERSION) == VERSION_TDI_STATE == 0x0001_0002
    assert VERSION_LOCK_BARS == 0x0001_0001


def test_lock_records_reach_the_backend_and_in_len_is_consumed() -> None:
    backend = scripted()
    _, drv, _ = make(backend)
    assert drv.start(Op.LOCK, data=build_lock_bars(BARS)) == Status.DONE
    assert backend.mmio_seen == [(Op.LOCK, TARGET, BARS)]
    assert drv.rd32(REG_IN_LEN) == 0  # the doorbell consumed it


def test_lock_without_data_is_the_1_0_lock() -> None:
    backend = scripted()
    _, drv, _ = make(backend)
    assert drv.start(Op.LOCK) == Status.DONE
    assert backend.mmio_seen == [] and backend.results[-1][0] == Op.LOCK


def test_a_1_0_drivers_stale_in_len_is_not_lock_data() -> None:
    """A 1.0 driver writes IN_LEN for DOE_RESPONSE only: the length of its last DOE
    response must not turn into BAR records of the LOCK it rings next."""
    backend = scripted()
    _, drv, _ = make(backend)
    assert drv.run(Op.CONNECT, endpoint_doe).result == 0
    drv.write(0x100000, build_lock_bars(BARS))  # whatever the IN window holds
    assert drv.ring(Op.LOCK) == Status.DONE  # no IN_LEN written
    assert backend.mmio_seen == []


@pytest.mark.parametrize(("name", "raw", "code", "text"), BAD, ids=[b[0] for b in BAD])
def test_malformed_lock_data_is_a_guest_mistake(name: str, raw: bytes, code: ErrorCode,
                                                text: str) -> None:
    backend = scripted()
    dev, drv, _ = make(backend)
    assert drv.start(Op.LOCK, data=raw) == Status.ERROR
    out = drv.outcome()
    assert out.error == code and text in out.reason, out
    assert backend.results == [] and backend.mmio_seen == []  # nothing started
    assert drv.rd32(REG_IN_LEN) == 0
    assert_still_works(drv, dev)


def test_lock_data_larger_than_the_window() -> None:
    backend = scripted()
    dev, drv, _ = make(backend)
    drv.wr32(REG_IN_LEN, (1 << 20) + LOCK_BAR_RECORD_SIZE)
    assert drv.start(Op.LOCK) == Status.ERROR
    assert drv.outcome().error == ErrorCode.BAD_LENGTH and backend.results == []
    assert_still_works(drv, dev)


@pytest.mark.parametrize("op", [Op.CONNECT, Op.START, Op.REPORT, Op.STATUS])
def test_other_operations_take_no_data(op: Op) -> None:
    backend = scripted()
    dev, drv, _ = make(backend)
    assert drv.start(op, data=build_lock_bars(BARS)) == Status.ERROR
    out = drv.outcome()
    assert out.error == ErrorCode.BAD_LENGTH and f"{op.name} takes no IN data" in out.reason
    assert backend.results == [] and backend.exchanges == []
    assert_still_works(drv, dev)


# ---- the model's backend -------------------------------------------------------------


class _Finished:
    done = True
    next_request = None
    result = Done(0, "ok")

    def feed(self, response: bytes) -> None:
        raise AssertionError

    def fail(self, cause: int | str) -> None:
        raise AssertionError


def test_adapter_passes_records_only_when_given() -> None:
    calls: list[tuple[Any, ...]] = []

    def start(op: Op, target: TargetFunction, mmio: tuple[LockBar, ...]) -> _Finished:
        calls.append((op, target, mmio))
        return _Finished()

    be = OperationBackend(start)  # type: ignore[arg-type]
    assert be.start(Op.LOCK, TARGET) == Done(0, "ok")
    assert be.start(Op.LOCK, TARGET, mmio=list(BARS)) == Done(0, "ok")
    assert calls == [(Op.LOCK, TARGET, ()), (Op.LOCK, TARGET, BARS)]


# ---- with the TSM model behind the mailbox ---------------------------------------------


@pytest.fixture(scope="module")
def anchor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lock-bars") / "root.pem"
    path.write_bytes(identity().root.public_bytes(serialization.Encoding.PEM))
    return path


def _model_mailbox(anchor: Path) -> tuple[Any, Any]:
    device = make_device()
    _, drv, _ = make(mailbox_backend(anchor, None))
    assert drv.run(Op.CONNECT, device.doe_exchange).result == 0
    return drv, device


GOOD = tuple(LockBar(b.index, b.base, b.size) for b in EXPECTED)


def test_model_accepts_a_report_matching_the_guests_bars(anchor: Path) -> None:
    drv, device = _model_mailbox(anchor)
    assert drv.run(Op.LOCK, device.doe_exchange, build_lock_bars(GOOD)).result == 0
    report = drv.run(Op.REPORT, device.doe_exchange)
    assert report.status == Status.DONE and report.result == 0, report
    assert InterfaceReport.decode(report.data).mmio_ranges[0].first_page == GOOD[0].base
    assert drv.run(Op.START, device.doe_exchange).result == 0
    assert device.tdi_state == "RUN"
    assert drv.run(Op.DISCONNECT, device.doe_exchange).result == 0


def test_model_refuses_a_report_that_misses_the_guests_bars(anchor: Path) -> None:
    drv, device = _model_mailbox(anchor)
    moved = (LockBar(0, GOOD[0].base + 0x1000, GOOD[0].size), GOOD[1])
    assert drv.run(Op.LOCK, device.doe_exchange, build_lock_bars(moved)).result == 0
    report = drv.run(Op.REPORT, device.doe_exchange)
    assert report.status == Status.DONE and report.result == -errno.EACCES, report
    assert "interface report does not match the host's BARs" in report.reason
    assert "BAR0" in report.reason
    start = drv.run(Op.START, device.doe_exchange)
    assert start.result == -errno.EACCES and "interface report was rejected" in start.reason
    assert device.tdi_state == "CONFIG_LOCKED" and start.tdi_state == TdiState.CONFIG_LOCKED
    # The clean path: STOP, LOCK with the right BARs, REPORT, START.
    assert drv.run(Op.STOP, device.doe_exchange).result == 0
    assert drv.run(Op.LOCK, device.doe_exchange, build_lock_bars(GOOD)).result == 0
    assert drv.run(Op.REPORT, device.doe_exchange).result == 0
    assert drv.run(Op.START, device.doe_exchange).result == 0
    assert device.tdi_state == "RUN"


def test_model_start_checks_the_report_itself(anchor: Path) -> None:
    """LOCK then START, nothing between: START reads the report, checks it against the
    guest's BARs and starts; TDI_STATE says RUN."""
    drv, device = _model_mailbox(anchor)
    lock = drv.run(Op.LOCK, device.doe_exchange, build_lock_bars(GOOD))
    assert lock.result == 0 and lock.tdi_state == TdiState.CONFIG_LOCKED
    start = drv.run(Op.START, device.doe_exchange)
    assert start.result == 0 and start.tdi_state == TdiState.RUN, start
    assert device.tdi_state == "RUN"


def test_model_start_refuses_a_report_it_reads_that_misses_the_guests_bars(
        anchor: Path) -> None:
    drv, device = _model_mailbox(anchor)
    moved = (LockBar(0, GOOD[0].base + 0x1000, GOOD[0].size), GOOD[1])
    assert drv.run(Op.LOCK, device.doe_exchange, build_lock_bars(moved)).result == 0
    start = drv.run(Op.START, device.doe_exchange)
    assert start.result == -errno.EACCES, start
    assert start.reason.startswith("start failed at report check: interface report does "
                                   "not match the host's BARs: BAR0"), start.reason
    assert device.tdi_state == "CONFIG_LOCKED" and start.tdi_state == TdiState.CONFIG_LOCKED
    # STATUS asks the device; TDI_STATE and the data agree.
    status = drv.run(Op.STATUS, device.doe_exchange)
    assert status.data == b'{"value":"CONFIG_LOCKED"}'
    assert status.tdi_state == TdiState.CONFIG_LOCKED


def test_model_lock_without_bars_leaves_the_report_unchecked(anchor: Path) -> None:
    drv, device = _model_mailbox(anchor)
    assert drv.run(Op.LOCK, device.doe_exchange).result == 0
    assert drv.run(Op.REPORT, device.doe_exchange).result == 0
    assert drv.run(Op.START, device.doe_exchange).result == 0
