"""The TSM mailbox register protocol with the real TSM model behind it.

tests/tsm_mailbox/test_fuzz.py drives random register traffic against a scripted
backend; here the backend is `tsm.mailbox_backend` (what `vdev tsm serve`
runs) and the guest misbehaves in the middle of real operations: random register
writes, garbage or truncated DOE responses, transport error codes, a corrupted
response, operations started while another is in flight.  Invariants: no access
raises; after ABORT a well-behaved CONNECT / LOCK / START / DISCONNECT sequence
succeeds (CONNECT, LOCK, REPORT, START, DISCONNECT: each DONE with result 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.budget import examples
from tests.helpers.mailbox_driver import MailboxDriver
from tests.helpers.tsm_rig import Device, identity, make_device
from tsm import mailbox_backend
from tsm.mailbox_protocol import Op
from vdev.pci.device_api import RegionIndex
from vdev.tsm_mailbox.device import TsmMailboxDevice
from vdev.tsm_mailbox.protocol import (
    BAR0_SIZE,
    IN_WINDOW,
    REG_DOORBELL,
    REG_IN_LEN,
    REG_IN_RC,
    REG_OP,
    REG_TARGET,
    Status,
)


@pytest.fixture(scope="module")
def anchor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tsm-fuzz") / "root.pem"
    path.write_bytes(identity().root.public_bytes(serialization.Encoding.PEM))
    return path


_step = st.one_of(
    st.tuples(st.just("answer"), st.integers(0, 0), st.binary(max_size=0)),
    st.tuples(st.just("answer"), st.integers(0, 0), st.binary(max_size=0)),
    st.tuples(st.just("garbage"), st.integers(-200, 200), st.binary(max_size=48)),
    st.tuples(st.just("corrupt"), st.integers(0, 4096), st.binary(min_size=1, max_size=1)),
    st.tuples(st.just("reg"), st.sampled_from([REG_OP, REG_TARGET, REG_IN_LEN, REG_IN_RC,
                                               REG_DOORBELL, IN_WINDOW, 0x100, BAR0_SIZE - 4]),
              st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("start"), st.sampled_from([int(o) for o in Op] + [0, 0x20]),
              st.binary(max_size=0)),
    st.tuples(st.just("cfg"), st.integers(0x40, 0xFFC), st.binary(min_size=1, max_size=4)),
)


def _drive(drv: MailboxDriver, dev: Device, steps: list[tuple[str, int, bytes]]) -> None:
    for kind, arg, data in steps:
        if kind in ("answer", "garbage", "corrupt"):
            out_type, request = drv.request()
            if kind == "answer":
                drv.respond(dev.doe_exchange(out_type, request) if request else b"")
            elif kind == "garbage":
                drv.respond(data, rc=arg if arg < 0 else 0)
            else:
                reply = bytearray(dev.doe_exchange(out_type, request) if request else b"\0")
                reply[arg % len(reply)] ^= data[0] | 1
                drv.respond(bytes(reply))
        elif kind == "reg":
            drv.write(arg, data[: BAR0_SIZE - arg])
        elif kind == "start":
            drv.start(Op(arg) if arg in Op._value2member_map_ else arg, wait=True)  # type: ignore[arg-type]
        else:
            pass  # config writes are applied by the caller (they may FLR the device)


@examples(30)
@given(st.sampled_from([Op.CONNECT, Op.STATUS, Op.CONNECT]), st.lists(_step, max_size=15))
def test_misbehaving_guest_mid_operation(anchor: Path, first: Op,
                                         steps: list[tuple[str, int, bytes]]) -> None:
    dev = make_device()
    mbx = TsmMailboxDevice(mailbox_backend(anchor, None))

    def read(off: int, n: int) -> bytes:
        return mbx.region_read(RegionIndex.BAR0, off, n)

    def write(off: int, data: bytes) -> None:
        mbx.region_write(RegionIndex.BAR0, off, data)

    drv = MailboxDriver(read, write)
    drv.start(first)
    for step in steps:
        if step[0] == "cfg":
            mbx.region_write(RegionIndex.CONFIG, step[1], step[2])
        else:
            _drive(drv, dev, [step])
    # Recovery: ABORT, then a well-behaved guest connects, locks, starts, disconnects.
    drv.ring(Op.ABORT)

    def doe(t: int, p: bytes) -> bytes:
        return dev.doe_exchange(t, p)

    first_out = drv.run(Op.DISCONNECT, doe)  # whatever the fuzzed guest left connected
    assert first_out.status == Status.DONE, first_out
    for op in (Op.CONNECT, Op.LOCK, Op.REPORT, Op.START, Op.DISCONNECT):
        out = drv.run(op, doe)
        assert out.status == Status.DONE and out.result == 0, (op, out)
    assert dev.responder.sessions == {}
