"""SET_IRQS: eventfd delivery, masking/pending, de-assign, replace, INTx automask."""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Iterator

import pytest

from tests.vdev.vfio_user.conftest import DOORBELL, ServerHandle
from vdev.pci.device_api import IrqIndex, RegionIndex
from vdev.vfio_user import wire
from vdev.vfio_user.client import VfioUserClient
from vdev.vfio_user.errors import VfioUserError
from vdev.vfio_user.server import Connection
from vdev.vfio_user.wire import SetIrqsFlags as F

pytestmark = pytest.mark.timeout(10)


def fired(efd: int, timeout: float = 0.5) -> int:
    """Eventfd counter value if signalled within `timeout`, else 0."""
    r, _, _ = select.select([efd], [], [], timeout)
    return os.eventfd_read(efd) if r else 0


def ring(c: VfioUserClient, value: int) -> None:
    c.region_write(RegionIndex.BAR0, DOORBELL, value.to_bytes(4, "little"))


def conn(server: ServerHandle) -> Connection:
    connection = server.server.connection
    assert connection is not None
    return connection


@pytest.fixture
def efds() -> Iterator[list[int]]:
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(4)]
    yield fds
    for fd in fds:
        os.close(fd)


def test_msix_trigger_via_eventfd(server: ServerHandle, efds: list[int]) -> None:
    with server.client() as c:
        c.set_irq_eventfds(IrqIndex.MSIX, 0, efds)  # four fds in one SCM_RIGHTS
        ring(c, 0)
        assert fired(efds[0]) == 1
        ring(c, 3)
        assert fired(efds[3]) == 1
        assert fired(efds[1], 0.05) == 0
        # The server holds its own duplicates of the fds.
        assert conn(server).irq.fd(IrqIndex.MSIX, 0) not in (None, efds[0])


def test_mask_sets_pending_and_unmask_delivers(server: ServerHandle, efds: list[int]) -> None:
    with server.client() as c:
        c.set_irq_eventfds(IrqIndex.MSIX, 0, efds[:2])
        c.set_irqs(IrqIndex.MSIX, F.DATA_NONE | F.MASK, 1, 1)
        ring(c, 1)
        assert fired(efds[1], 0.1) == 0
        assert conn(server).irq.is_pending(IrqIndex.MSIX, 1)
        ring(c, 0)  # vector 0 is not masked
        assert fired(efds[0]) == 1
        c.set_irqs(IrqIndex.MSIX, F.DATA_NONE | F.UNMASK, 1, 1)
        assert fired(efds[1]) == 1
        assert not conn(server).irq.is_pending(IrqIndex.MSIX, 1)
        # DATA_BOOL selects vectors by byte.
        c.set_irqs(IrqIndex.MSIX, F.DATA_BOOL | F.MASK, 0, 2, data=b"\x01\x00")
        assert conn(server).irq.is_masked(IrqIndex.MSIX, 0)
        assert not conn(server).irq.is_masked(IrqIndex.MSIX, 1)


def test_deassign_replace_and_disable(server: ServerHandle, efds: list[int]) -> None:
    with server.client() as c:
        c.set_irq_eventfds(IrqIndex.MSIX, 0, efds[:1])
        # A new fd replaces (and the server closes) the old one.
        old = conn(server).irq.fd(IrqIndex.MSIX, 0)
        c.set_irq_eventfds(IrqIndex.MSIX, 0, efds[1:2])
        assert conn(server).irq.fd(IrqIndex.MSIX, 0) != old
        ring(c, 0)
        assert fired(efds[1]) == 1 and fired(efds[0], 0.05) == 0
        # DATA_EVENTFD with count 1 and no fds de-assigns (QEMU's MSI-X enable).
        c.set_irqs(IrqIndex.MSIX, F.DATA_EVENTFD | F.TRIGGER, 0, 1)
        assert conn(server).irq.fd(IrqIndex.MSIX, 0) is None
        ring(c, 0)
        assert fired(efds[1], 0.1) == 0
        # NONE|TRIGGER start=count=0 disables the whole index.
        c.set_irq_eventfds(IrqIndex.MSIX, 0, efds)
        c.disable_irqs(IrqIndex.MSIX)
        assert all(conn(server).irq.fd(IrqIndex.MSIX, v) is None for v in range(4))
        ring(c, 2)
        assert fired(efds[2], 0.1) == 0


def test_loopback_trigger(server: ServerHandle, efds: list[int]) -> None:
    with server.client() as c:
        c.set_irq_eventfds(IrqIndex.MSI, 0, efds[:1])
        c.set_irqs(IrqIndex.MSI, F.DATA_NONE | F.TRIGGER, 0, 1)
        assert fired(efds[0]) == 1


def test_intx_level_automask(server: ServerHandle, efds: list[int]) -> None:
    with server.client() as c:
        c.set_irq_eventfds(IrqIndex.INTX, 0, efds[:1])
        ring(c, 0x100)
        assert fired(efds[0]) == 1
        ring(c, 0x100)  # automasked until UNMASK: stays pending
        assert fired(efds[0], 0.1) == 0
        c.set_irqs(IrqIndex.INTX, F.DATA_NONE | F.UNMASK, 0, 1)
        assert fired(efds[0]) == 1
        # Resample eventfd (KVM) is refused so QEMU falls back to userspace EOI.
        with pytest.raises(VfioUserError) as ei:
            c.set_irqs(IrqIndex.INTX, F.DATA_EVENTFD | F.UNMASK, 0, 1, efds[1:2])
        assert ei.value.errno == errno.ENOTSUP


@pytest.mark.parametrize(
    ("index", "flags", "start", "count", "nfds"),
    [
        (IrqIndex.MSIX, F.DATA_EVENTFD | F.TRIGGER, 0, 2, 1),  # fd count mismatch
        (IrqIndex.MSIX, F.DATA_EVENTFD | F.TRIGGER, 3, 2, 2),  # beyond vectors
        (IrqIndex.MSIX, F.DATA_NONE | F.TRIGGER, 0, 1, 1),  # fds without EVENTFD
        (5, F.DATA_EVENTFD | F.TRIGGER, 0, 1, 1),  # bad index
        (IrqIndex.MSIX, F.DATA_EVENTFD | F.DATA_NONE | F.TRIGGER, 0, 1, 0),
        (IrqIndex.MSIX, F.DATA_NONE | F.MASK | F.UNMASK, 0, 1, 0),
        (IrqIndex.MSIX, 0x40 | F.DATA_NONE | F.MASK, 0, 1, 0),
        (IrqIndex.ERR, F.DATA_EVENTFD | F.TRIGGER, 0, 1, 1),  # no ERR vectors
    ],
)
def test_set_irqs_rejects(server: ServerHandle, efds: list[int], index: int, flags: int,
                          start: int, count: int, nfds: int) -> None:
    with server.client() as c:
        with pytest.raises(VfioUserError) as ei:
            c.set_irqs(index, flags, start, count, efds[:nfds])
        assert ei.value.errno == errno.EINVAL
        assert all(conn(server).irq.fd(i, v) is None for i in range(5) for v in range(4))
        assert c.region_read(RegionIndex.CONFIG, 0, 2) == b"\x34\x12"


def test_set_irqs_wire_layout(server: ServerHandle, efds: list[int]) -> None:
    with server.client() as c:
        payload = wire.build(wire.SetIrqs, argsz=20, flags=F.DATA_EVENTFD | F.TRIGGER,
                             index=2, start=0, count=1, data=b"")
        assert len(payload) == 20  # QEMU's SET_IRQS is always 36 bytes on the wire
        reply = c.request(wire.Command.DEVICE_SET_IRQS, payload, efds[:1])
        assert reply is not None and reply.size == 16
