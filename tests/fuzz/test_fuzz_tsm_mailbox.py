"""Random guest register traffic never raises out of the mailbox device, and a
well-behaved operation still works afterwards."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.mailbox_driver import MailboxDriver
from tsm.mailbox_protocol import DoeRequest, Done, Op
from vdev.pci.device_api import RegionIndex
from vdev.tsm_mailbox.backend import Script, ScriptedBackend
from vdev.tsm_mailbox.device import TsmMailboxDevice
from vdev.tsm_mailbox.protocol import (
    BAR0_SIZE,
    IN_WINDOW,
    OUT_WINDOW,
    REG_DOORBELL,
    REG_IN_LEN,
    REG_IN_RC,
    REG_OP,
    REG_TARGET,
    Status,
)

HOT = [REG_OP, REG_TARGET, REG_IN_LEN, REG_IN_RC, REG_DOORBELL, IN_WINDOW, OUT_WINDOW,
       0x100, 0x2000, BAR0_SIZE - 8]

access = st.one_of(
    st.tuples(st.just("w"), st.sampled_from(HOT), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("w"), st.sampled_from([REG_OP, REG_DOORBELL]),
              st.sampled_from([b"\x01\0\0\0", b"\x10\0\0\0", b"\x1f\0\0\0", b"\x07\0\0\0"])),
    st.tuples(st.just("r"), st.integers(0, BAR0_SIZE - 8), st.integers(1, 8)),
    st.tuples(st.just("c"), st.integers(0, 4092), st.binary(min_size=1, max_size=4)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(access, max_size=40))
def test_random_traffic_never_breaks_the_device(ops: list[tuple[str, int, object]]) -> None:
    backend = ScriptedBackend({Op.CONNECT: [Script((DoeRequest(1, b"\x10\x84\0\0"),),
                                                   Done(0, "ok"))]})
    dev = TsmMailboxDevice(backend)
    for kind, off, arg in ops:
        if kind == "w":
            assert isinstance(arg, bytes)
            dev.region_write(RegionIndex.BAR0, off, arg[: BAR0_SIZE - off])
        elif kind == "r":
            assert isinstance(arg, int)
            assert len(dev.region_read(RegionIndex.BAR0, off, arg)) == arg
        else:
            assert isinstance(arg, bytes)
            dev.region_write(RegionIndex.CONFIG, off, arg)  # may even FLR the device
    drv = MailboxDriver(lambda o, n: dev.region_read(RegionIndex.BAR0, o, n),
                        lambda o, d: dev.region_write(RegionIndex.BAR0, o, d))
    drv.ring(Op.ABORT)
    out = drv.run(Op.CONNECT, lambda t, p: b"\x10\x04\0\0")
    assert out.status == Status.DONE and out.result == 0
