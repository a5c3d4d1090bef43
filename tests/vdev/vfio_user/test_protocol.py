"""Every command QEMU 11 sends, driven through the in-repo client."""

from __future__ import annotations

import errno
import json
import logging
import socket
import struct

import pytest

from tests.vdev.vfio_user.conftest import SCRATCH, ServerHandle, wait_for
from vdev.pci.device_api import IrqIndex, RegionIndex
from vdev.vfio_user import wire
from vdev.vfio_user.client import VfioUserClient
from vdev.vfio_user.errors import VfioUserError
from vdev.vfio_user.wire import Command

pytestmark = pytest.mark.timeout(10)


def test_header_encoding_is_exact() -> None:
    # id 0x0102, cmd REGION_READ (9), size 32, flags 0x10, error 0 -- little-endian.
    msg = wire.build_message(0x0102, Command.REGION_READ, b"\0" * 16, flags=0x10)
    assert msg[:16] == bytes.fromhex("0201" "0900" "20000000" "10000000" "00000000")
    err = wire.build_error_reply(7, Command.DMA_MAP, errno.EINVAL)
    assert err == bytes.fromhex("0700" "0200" "10000000" "21000000") + struct.pack("<I", 22)


def test_version_reply_bytes(server: ServerHandle) -> None:
    c = server.client(negotiate=False)
    caps = json.dumps({"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": 1048576,
                                        "pgsizes": 4096, "max_dma_maps": 65535,
                                        "write_multiple": True}}).encode()
    req = struct.pack("<HH", 0, 0) + caps + b"\0"
    c.send_raw(wire.build_message(0, Command.VERSION, req))
    reply = c.recv()
    assert (reply.id, reply.cmd, reply.flags, reply.error) == (0, 1, 1, 0)
    assert reply.fds == []
    # Header bytes on the wire, and a reply no bigger than QEMU's rsize (its request size).
    assert reply.size == 16 + len(reply.payload) <= 16 + len(req)
    assert reply.payload[:4] == b"\0\0\0\0"  # version 0.0
    assert reply.payload.endswith(b"\0") and reply.payload.count(b"\0", 4) == 1
    body = json.loads(reply.payload[4:-1])
    assert body["capabilities"]["max_msg_fds"] == 8
    assert body["capabilities"]["max_data_xfer_size"] == 1 << 20
    assert body["capabilities"]["write_multiple"] is True
    c.close()


def test_version_twice_and_commands_before_version(server: ServerHandle) -> None:
    c = server.client(negotiate=False)
    with pytest.raises(VfioUserError) as ei:
        c.get_device_info()
    assert ei.value.errno == errno.EINVAL
    c.negotiate()
    with pytest.raises(VfioUserError) as ei:
        c.negotiate()
    assert ei.value.errno == errno.EINVAL
    assert c.get_device_info().num_regions == 9


def test_device_info(server: ServerHandle) -> None:
    with server.client() as c:
        info = c.get_device_info()
        assert info.argsz == 16
        assert info.flags == wire.DeviceInfoFlags.PCI | wire.DeviceInfoFlags.RESET
        assert (info.num_regions, info.num_irqs) == (9, 5)


def test_region_info(server: ServerHandle) -> None:
    with server.client() as c:
        cfg = c.get_region_info(RegionIndex.CONFIG)
        assert (cfg.argsz, cfg.index, cfg.size, cfg.cap_offset, cfg.offset) == (32, 7, 4096, 0, 0)
        assert cfg.flags == wire.RegionInfoFlags.READ | wire.RegionInfoFlags.WRITE  # no MMAP
        assert c.get_region_info(RegionIndex.BAR2).flags == wire.RegionInfoFlags.READ
        absent = c.get_region_info(RegionIndex.ROM)
        assert (absent.size, absent.flags) == (0, 0)
        # Raw reply: exactly the 32-byte struct, within QEMU's rsize of 48.
        payload = wire.build(wire.RegionInfo, argsz=32, flags=0, index=0, cap_offset=0,
                             size=0, offset=0)
        reply = c.request(Command.DEVICE_GET_REGION_INFO, payload)
        assert reply is not None and reply.size == 48
        for bad in (9, 100):
            with pytest.raises(VfioUserError) as ei:
                c.get_region_info(bad)
            assert ei.value.errno == errno.EINVAL
        with pytest.raises(VfioUserError):
            c.get_region_info(0, argsz=16)


def test_irq_info(server: ServerHandle) -> None:
    with server.client() as c:
        intx = c.get_irq_info(IrqIndex.INTX)
        assert intx.flags == (wire.IrqInfoFlags.EVENTFD | wire.IrqInfoFlags.MASKABLE
                              | wire.IrqInfoFlags.AUTOMASKED)
        assert intx.count == 1
        msix = c.get_irq_info(IrqIndex.MSIX)
        assert (msix.flags, msix.count, msix.index) == (wire.IrqInfoFlags.EVENTFD, 4, 2)
        assert c.get_irq_info(IrqIndex.ERR).count == 0
        with pytest.raises(VfioUserError) as ei:
            c.get_irq_info(5)
        assert ei.value.errno == errno.EINVAL


def test_region_read_write(server: ServerHandle) -> None:
    with server.client() as c:
        assert c.region_read(RegionIndex.CONFIG, 0, 4) == bytes.fromhex("34127856")
        whole = c.region_read(RegionIndex.CONFIG, 0, 4096)  # QEMU's first config read
        assert len(whole) == 4096
        c.region_write(RegionIndex.CONFIG, SCRATCH, b"\x11\x22\x33\x44")
        assert c.region_read(RegionIndex.CONFIG, SCRATCH, 4) == b"\x11\x22\x33\x44"
        # Write reply echoes offset/region/count, without data.
        payload = wire.build(wire.RegionAccessData, offset=SCRATCH, region=7, count=2,
                             data=b"\x55\x66")
        reply = c.request(Command.REGION_WRITE, payload)
        assert reply is not None
        assert reply.payload == struct.pack("<QII", SCRATCH, 7, 2)
        c.region_write(RegionIndex.BAR0, 0x100, b"12345678")
        assert c.region_read(RegionIndex.BAR0, 0x100, 8) == b"12345678"


@pytest.mark.parametrize(
    ("index", "offset", "count"),
    [(9, 0, 4), (RegionIndex.ROM, 0, 4), (RegionIndex.CONFIG, 4094, 4),
     (RegionIndex.CONFIG, 4096, 1), (RegionIndex.BAR0, 1 << 40, 4)],
)
def test_region_access_out_of_bounds(server: ServerHandle, index: int, offset: int,
                                     count: int) -> None:
    with server.client() as c:
        with pytest.raises(VfioUserError) as ei:
            c.region_read(index, offset, count)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(VfioUserError) as ei:
            c.region_write(index, offset, b"\0" * count)
        assert ei.value.errno == errno.EINVAL
        # Read-only region refuses writes.
        with pytest.raises(VfioUserError):
            c.region_write(RegionIndex.BAR2, 0, b"\0\0\0\0")
        assert c.region_read(RegionIndex.CONFIG, 0, 2) == b"\x34\x12"  # still in sync


def test_posted_write_gets_no_reply(server: ServerHandle) -> None:
    with server.client() as c:
        c.region_write(RegionIndex.BAR0, 0x200, b"\xaa\xbb\xcc\xdd", posted=True)
        assert c.poll_message(0.2) is None
        # A posted write that fails is not answered either (docs/vfio-user-qemu.md §10.1).
        c.region_write(RegionIndex.BAR0, 4096, b"\xaa", posted=True)
        assert c.poll_message(0.2) is None
        assert c.region_read(RegionIndex.BAR0, 0x200, 4) == b"\xaa\xbb\xcc\xdd"


def test_write_multi(server: ServerHandle) -> None:
    with server.client() as c:
        c.write_multi([(RegionIndex.BAR0, 0x300, b"\x01\x02"),
                       (RegionIndex.BAR0, 0x308, b"abcdefgh"),
                       (RegionIndex.CONFIG, SCRATCH, b"\x99")])
        assert c.poll_message(0.2) is None
        assert c.region_read(RegionIndex.BAR0, 0x300, 16) == b"\x01\x02" + b"\0" * 6 + b"abcdefgh"
        assert c.region_read(RegionIndex.CONFIG, SCRATCH, 1) == b"\x99"


def test_device_reset(server: ServerHandle) -> None:
    with server.client() as c:
        c.device_reset()
        reply = c.request(Command.DEVICE_RESET)
        assert reply is not None and reply.size == 16 and reply.payload == b""
        assert server.device.resets == 2


def test_dma_map_unmap_errors(server: ServerHandle) -> None:
    with server.client() as c:
        c.dma_map(0x1000, 0x1000)
        with pytest.raises(VfioUserError) as ei:
            c.dma_map(0x1800, 0x1000)  # overlaps
        assert ei.value.errno == errno.EEXIST
        with pytest.raises(VfioUserError) as ei:
            c.dma_unmap(0x5000, 0x1000)
        assert ei.value.errno == errno.ENOENT
        with pytest.raises(VfioUserError) as ei:
            c.dma_unmap(0x1000, 0x800)  # would split a map
        assert ei.value.errno == errno.EINVAL
        # Unmap reply echoes the 24-byte struct (QEMU's rsize is 40).
        payload = wire.build(wire.DmaUnmap, argsz=24, flags=0, iova=0x1000, size=0x1000)
        reply = c.request(Command.DMA_UNMAP, payload)
        assert reply is not None and reply.size == 40
        assert wire.parse(wire.DmaUnmap, reply.payload).iova == 0x1000


def test_device_exception_gives_eio(server: ServerHandle) -> None:
    with server.client() as c:
        server.device.fail_next_read = True
        with pytest.raises(VfioUserError) as ei:
            c.region_read(RegionIndex.BAR0, 0, 4)
        assert ei.value.errno == errno.EIO
        assert c.region_read(RegionIndex.BAR0, 0, 4) == b"\0\0\0\0"


def test_message_ids_wrap(server: ServerHandle) -> None:
    with server.client() as c:
        c._next_id = 0xFFFE
        for _ in range(4):
            assert c.region_read(RegionIndex.CONFIG, 0, 2) == b"\x34\x12"
        assert c._next_id == 2


def test_second_client_is_queued(server: ServerHandle) -> None:
    c1 = server.client()
    c2 = VfioUserClient(server.path, timeout=2.0)
    c2.send_raw(wire.build_message(0, Command.VERSION, wire.build(
        wire.Version, major=0, minor=0, json='{"capabilities":{}}')))
    assert c2.poll_message(0.3) is None  # waits in the backlog
    assert c1.region_read(RegionIndex.CONFIG, 0, 2) == b"\x34\x12"
    c1.close()
    reply = c2.recv()
    assert (reply.cmd, reply.flags) == (Command.VERSION, 1)
    assert c2.region_read(RegionIndex.CONFIG, 0, 2) == b"\x34\x12"
    c2.close()
    wait_for(lambda: server.device.detaches == 2)


def test_stale_socket_is_replaced(server: ServerHandle) -> None:
    import asyncio

    from vdev.vfio_user.server import VfioUserServer

    from .conftest import FakeDevice

    path = server.path + "2"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # leaves the socket file behind

    async def main() -> None:
        srv = VfioUserServer(FakeDevice(), path)
        await srv.start()
        with pytest.raises(FileExistsError):
            await VfioUserServer(FakeDevice(), path).start()  # a live server listens
        await srv.close()

    asyncio.run(main())


def test_serve_entry_point(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import os
    import tempfile

    from vdev.vfio_user import serve

    from .conftest import FakeDevice

    path = tempfile.mkdtemp(prefix="vus-", dir="/tmp") + "/d.sock"

    def use() -> bytes:
        with VfioUserClient(path, timeout=2) as c:
            c.negotiate()
            return c.region_read(RegionIndex.CONFIG, 0, 2)

    async def main() -> bytes:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(FakeDevice(), path, stop=stop))
        while not os.path.exists(path):
            await asyncio.sleep(0.01)
        result = await asyncio.to_thread(use)
        stop.set()
        await asyncio.wait_for(task, 2)
        return result

    with caplog.at_level(logging.INFO, logger="vdev.vfio_user"):
        assert asyncio.run(main()) == b"\x34\x12"
    assert f"listening on {path}" in caplog.text
    assert not os.path.exists(path)  # removed on shutdown
