"""A device-specific region over the wire: the endpoint's DOE batch region
(vdev.pci.doe_batch) as a vfio-user client finds and uses it."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

import pytest

from tests.vdev.vfio_user.conftest import LOOPS
from vdev.doe.mailbox import CTRL_GO, DOE_CTRL, DOE_READ, DOE_STATUS, DOE_WRITE
from vdev.endpoint.function import TeeIoEndpoint
from vdev.pci.device_api import RegionIndex, RegionInfo, RegionType
from vdev.vfio_user import wire
from vdev.vfio_user.client import VfioUserClient
from vdev.vfio_user.errors import VfioUserError
from vdev.vfio_user.server import VfioUserServer
from vdev.vfio_user.threaded import ThreadedServer, serve_in_thread
from vdev.vfio_user.wire import Command

pytestmark = pytest.mark.timeout(10)

DOE = 0x100  # the default profile's DOE capability
BATCH = 9  # the first index after VGA (8)
WINDOW = DOE << 21
# DOE Discovery, index 0 (PCIe r6.2 §6.30.1.1): header DWs, then the index DW.
DISCOVERY = [0x0000_0001, 3, 0x0000_0000]


@pytest.fixture(params=LOOPS)
def endpoint(request: pytest.FixtureRequest) -> Iterator[ThreadedServer[TeeIoEndpoint]]:
    with serve_in_thread(lambda loop: TeeIoEndpoint(), loop_choice=request.param) as s:
        yield s


def config_dw(c: VfioUserClient, offset: int) -> int:
    return int.from_bytes(c.region_read(RegionIndex.CONFIG, offset, 4), "little")


def go(c: VfioUserClient, *, posted: bool = False) -> None:
    c.region_write(RegionIndex.CONFIG, DOE + DOE_CTRL, CTRL_GO.to_bytes(4, "little"),
                   posted=posted)


def test_the_region_is_announced_with_its_type(
        endpoint: ThreadedServer[TeeIoEndpoint]) -> None:
    with VfioUserClient(endpoint.path) as c:
        c.negotiate()
        assert c.get_device_info().num_regions == 10
        # Asked with the bare struct, the reply says how much room the capability
        # needs and carries none: no CAPS flag, no cap_offset (what QEMU's client
        # accepts: it refuses CAPS with a cap_offset inside the struct).
        payload = wire.build(wire.RegionInfo, argsz=32, flags=0, index=BATCH, cap_offset=0,
                             size=0, offset=0)
        first = c.request(Command.DEVICE_GET_REGION_INFO, payload)
        assert first is not None
        argsz, flags, index, cap_offset, size, offset = struct.unpack(
            "<IIIIQQ", bytes(first.payload))
        assert (argsz, index, cap_offset, size, offset) == (48, BATCH, 0, 0x1000 << 21, 0)
        assert flags == 0x1 | 0x2  # READ | WRITE; no MMAP
        # With that room: struct vfio_info_cap_header (id 2 = CAP_TYPE, version 1,
        # next 0) and struct vfio_region_info_cap_type, right after the 32 bytes.
        payload = wire.build(wire.RegionInfo, argsz=48, flags=0, index=BATCH, cap_offset=0,
                             size=0, offset=0)
        second = c.request(Command.DEVICE_GET_REGION_INFO, payload)
        assert second is not None and len(second.payload) == 48
        # flags READ | WRITE | CAPS, and the capability at 32.
        assert struct.unpack("<IIII", bytes(second.payload[:16])) == (48, 0xB, BATCH, 32)
        assert bytes(second.payload[32:]) == struct.pack("<HHIII", 2, 1, 0, 0x8000_0001, 0x2E)
        assert c.get_region_type(BATCH) == (0x8000_0001, 0x2E)
        assert c.get_region_type(RegionIndex.CONFIG) is None
        with pytest.raises(VfioUserError) as ei:
            c.get_region_info(10)
        assert ei.value.errno == errno.EINVAL


def test_an_exchange_through_the_region_matches_config_accesses(
        endpoint: ThreadedServer[TeeIoEndpoint]) -> None:
    with VfioUserClient(endpoint.path) as c:
        c.negotiate()
        # One DW per config access, as a guest's DOE driver does.
        for dw in DISCOVERY:
            c.region_write(RegionIndex.CONFIG, DOE + DOE_WRITE, dw.to_bytes(4, "little"))
        go(c)
        plain = []
        while config_dw(c, DOE + DOE_STATUS) & (1 << 31):
            plain.append(config_dw(c, DOE + DOE_READ))
            c.region_write(RegionIndex.CONFIG, DOE + DOE_READ, bytes(4))
        # Entry 0 is discovery itself (Vendor ID 0x0001 in bits 15:0, type 0 in
        # 23:16), and the next index, 1, in bits 31:24 (PCIe r6.2 §6.30.1.1).
        assert plain == [0x0000_0001, 3, 0x0100_0001]
        # In bulk: the request in one posted write, GO, then the response in one read.
        before = endpoint.device.activity.snapshot()
        c.region_write(BATCH, WINDOW, struct.pack("<3I", *DISCOVERY), posted=True)
        go(c, posted=True)
        avail = int.from_bytes(c.region_read(BATCH, WINDOW + 0xC, 4), "little")
        assert avail == 3
        batched = list(struct.unpack("<3I", c.region_read(BATCH, WINDOW + 0x10, 12)))
        c.region_write(BATCH, WINDOW + 0x8, (3).to_bytes(4, "little"), posted=True)
        assert batched == plain
        assert config_dw(c, DOE + DOE_STATUS) == 0
        after = endpoint.device.activity.snapshot()
        assert (after["doe_batch_reads"] - before["doe_batch_reads"],
                after["doe_batch_writes"] - before["doe_batch_writes"]) == (2, 2)
        assert after["doe_exchanges"] - before["doe_exchanges"] == 1


def test_a_refused_batch_access_is_an_einval_reply(
        endpoint: ThreadedServer[TeeIoEndpoint], caplog: pytest.LogCaptureFixture) -> None:
    with VfioUserClient(endpoint.path) as c:
        c.negotiate()
        with pytest.raises(VfioUserError) as ei:
            c.region_read(BATCH, WINDOW + 0x10, 4)  # nothing to read: no response
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(VfioUserError) as ei:
            c.region_write(BATCH, (DOE + 4) << 21, bytes(4))  # no DOE capability there
        assert ei.value.errno == errno.EINVAL
        assert config_dw(c, DOE + DOE_STATUS) == 0  # still serving, mailbox untouched
    assert "1 response DWs asked for, 0 available" in caplog.text
    assert "no DOE capability at 0x104" in caplog.text
    assert "Traceback" not in caplog.text


class _Regions(TeeIoEndpoint):
    def __init__(self, extra: list[RegionInfo]) -> None:
        super().__init__()
        self._extra = extra

    def regions(self) -> list[RegionInfo]:
        return [*super().regions()[:9], *self._extra]


@pytest.mark.parametrize(("extra", "reason"), [
    ([RegionInfo(10, 4096, type=RegionType(1, 1))], r"regions \[10\] do not follow region 8"),
    ([RegionInfo(9, 4096)], "device-specific region 9 has no type"),
])
def test_a_device_whose_regions_cannot_be_described_is_refused(
        extra: list[RegionInfo], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        VfioUserServer(_Regions(extra), "/nonexistent/dev.sock")
