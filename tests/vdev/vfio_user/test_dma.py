"""DMA: memfd mappings (one mmap per inode) and DMA_READ/DMA_WRITE messages."""

from __future__ import annotations

import errno
import os
import struct
import threading

import pytest

from tests.vdev.vfio_user.conftest import BUF, DMA_ADDR, DMA_CMD, DMA_LEN, ServerHandle, wait_for
from vdev.pci.device_api import RegionIndex
from vdev.vfio_user import wire
from vdev.vfio_user.client import VfioUserClient, make_memfd
from vdev.vfio_user.errors import DmaError, VfioUserError
from vdev.vfio_user.server import Connection
from vdev.vfio_user.wire import Command, DmaMapFlags

pytestmark = pytest.mark.timeout(10)

MiB = 1 << 20


def program(c: VfioUserClient, addr: int, length: int) -> None:
    c.region_write(RegionIndex.BAR0, DMA_ADDR, struct.pack("<Q", addr))
    c.region_write(RegionIndex.BAR0, DMA_LEN, struct.pack("<I", length))


def dma_cmd_payload(cmd: int) -> bytes:
    return wire.build(wire.RegionAccessData, offset=DMA_CMD, region=0, count=4,
                      data=struct.pack("<I", cmd))


def conn(server: ServerHandle) -> Connection:
    connection = server.server.connection
    assert connection is not None
    return connection


def test_memfd_dma_one_mmap_per_inode(server: ServerHandle) -> None:
    fd = make_memfd(4 * MiB)
    try:
        with server.client() as c:
            # Two ranges of one memfd, like QEMU's low RAM and RAM above 1 MiB.
            c.dma_map(0x0, 0xA0000, fd=fd, offset=0)
            c.dma_map(0x100000, 3 * MiB, fd=fd, offset=0x100000)
            assert conn(server).dma_table.mapped_files == 1
            os.pwrite(fd, b"guest says hello", 0x200010)
            program(c, 0x200010, 16)
            c.region_write(RegionIndex.BAR0, DMA_CMD, struct.pack("<I", 1))
            assert server.device.dma_results[-1] == b"guest says hello"
            # Device -> guest, across the end of one map? No: a range inside low RAM.
            c.region_write(RegionIndex.BAR0, BUF, b"written by device")
            program(c, 0x1000, 17)
            c.region_write(RegionIndex.BAR0, DMA_CMD, struct.pack("<I", 2))
            assert os.pread(fd, 17, 0x1000) == b"written by device"
            # The gap [0xa0000, 0x100000) is not mapped: the device gets EFAULT.
            program(c, 0x9FFF0, 0x20)
            with pytest.raises(VfioUserError) as ei:
                c.region_write(RegionIndex.BAR0, DMA_CMD, struct.pack("<I", 1))
            assert ei.value.errno == errno.EFAULT
            # Unmapping both maps frees the mmap.
            c.dma_unmap(0x0, 0xA0000)
            assert conn(server).dma_table.mapped_files == 1
            c.dma_unmap(0x100000, 3 * MiB)
            assert conn(server).dma_table.mapped_files == 0
            assert len(conn(server).dma_table) == 0
    finally:
        os.close(fd)


def test_dma_map_fd_errors(server: ServerHandle) -> None:
    fd = make_memfd(MiB)
    try:
        with server.client() as c:
            with pytest.raises(VfioUserError) as ei:
                c.dma_map(0, 2 * MiB, fd=fd)  # beyond the file
            assert ei.value.errno == errno.EINVAL
            with pytest.raises(VfioUserError) as ei:
                c.request(Command.DMA_MAP, wire.build(
                    wire.DmaMap, argsz=32, flags=3, offset=0, iova=0, size=4096), (fd, fd))
            assert ei.value.errno == errno.EINVAL  # two fds
            with pytest.raises(VfioUserError) as ei:
                c.dma_map(0, 4096, fd=fd, flags=0x80)
            assert ei.value.errno == errno.EINVAL
            assert len(conn(server).dma_table) == 0
            # Read-only map: device writes are refused.
            c.dma_map(0, MiB, fd=fd, flags=DmaMapFlags.READ)
            program(c, 0, 4)
            with pytest.raises(VfioUserError) as ei:
                c.region_write(RegionIndex.BAR0, DMA_CMD, struct.pack("<I", 2))
            assert ei.value.errno == errno.EACCES
    finally:
        os.close(fd)


def test_dma_messages_without_fd(server: ServerHandle) -> None:
    guest = bytearray(range(256)) * 16  # 4 KiB "guest RAM" behind iova 0x10000
    with server.client() as c:
        c.dma_read = lambda addr, n: bytes(guest[addr - 0x10000 : addr - 0x10000 + n])

        def dma_write(addr: int, data: bytes) -> None:
            guest[addr - 0x10000 : addr - 0x10000 + len(data)] = data

        c.dma_write = dma_write
        c.dma_map(0x10000, 0x1000)
        program(c, 0x10010, 32)
        # The server sends DMA_READ while handling this write; the client answers it.
        c.region_write(RegionIndex.BAR0, DMA_CMD, struct.pack("<I", 1))
        assert server.device.dma_results[-1] == bytes(range(16, 48))
        c.region_write(RegionIndex.BAR0, BUF, b"\xee" * 8)
        program(c, 0x10100, 8)
        c.region_write(RegionIndex.BAR0, DMA_CMD, struct.pack("<I", 2))
        assert guest[0x100:0x108] == b"\xee" * 8
        assert c.dma_requests_served == 2


def test_dma_message_layout_is_qemus(server: ServerHandle) -> None:
    with server.client() as c:
        c.dma_map(0x10000, 0x1000)
        c.region_write(RegionIndex.BAR0, BUF, b"ABCDE")
        program(c, 0x10020, 5)
        # Posted write: the device's DMA_WRITE request comes to us unprompted.
        c.request(Command.REGION_WRITE, dma_cmd_payload(2), no_reply=True)
        req = c.recv()
        raw = wire.build_message(req.id, req.cmd, req.payload, flags=req.flags)
        assert (req.cmd, req.flags, req.size) == (Command.DMA_WRITE, 0, 32 + 5)
        assert struct.unpack_from("<Q", raw, 16)[0] == 0x10020
        assert struct.unpack_from("<I", raw, 24)[0] == 5  # count: u32 at byte 24
        assert raw[28:33] == b"ABCDE"  # data at absolute byte 28 (QEMU's VFIOUserDMARW)
        c.send_raw(wire.build_message(req.id, req.cmd, flags=1))
        # DMA_READ: 32-byte request; the reply carries data at byte 28.
        program(c, 0x10000, 3)
        c.request(Command.REGION_WRITE, dma_cmd_payload(1), no_reply=True)
        req = c.recv()
        assert (req.cmd, req.size) == (Command.DMA_READ, 32)
        assert struct.unpack_from("<QI", req.payload) == (0x10000, 3)
        reply = struct.pack("<QI", 0x10000, 3) + b"xyz" + b"\0" * 4
        c.send_raw(wire.build_message(req.id, req.cmd, reply, flags=1))
        wait_for(lambda: server.device.dma_results[-1:] == [b"xyz"])


def test_requests_served_while_waiting_for_dma(server: ServerHandle) -> None:
    """No deadlock: the server keeps answering while its DMA_READ is outstanding."""
    with server.client() as c:
        c.dma_map(0x10000, 0x1000)
        program(c, 0x10000, 4)
        c.request(Command.REGION_WRITE, dma_cmd_payload(1), no_reply=True)  # posted
        dma_req = c.recv()
        assert dma_req.cmd == Command.DMA_READ
        # Like a vCPU holding the BQL: a synchronous read before answering the DMA.
        assert c.region_read(RegionIndex.CONFIG, 0, 2) == b"\x34\x12"
        reply = struct.pack("<QI", 0x10000, 4) + b"\x01\x02\x03\x04" + b"\0" * 4
        c.send_raw(wire.build_message(dma_req.id, dma_req.cmd, reply, flags=1))
        assert c.region_read(RegionIndex.BAR0, BUF, 4) == b"\x01\x02\x03\x04"


def test_dma_refused_by_client(server: ServerHandle) -> None:
    with server.client() as c:
        c.dma_map(0x10000, 0x1000)
        program(c, 0x10000, 4)
        with pytest.raises(VfioUserError) as ei:
            c.region_write(RegionIndex.BAR0, DMA_CMD, struct.pack("<I", 1))
        assert ei.value.errno == errno.ENOSYS  # the client's DMA error, passed on


def test_dma_timeout_and_late_reply(server: ServerHandle) -> None:
    with server.client() as c:
        c.dma_map(0x10000, 0x1000)
        program(c, 0x10000, 4)
        c.request(Command.REGION_WRITE, dma_cmd_payload(1), no_reply=True)
        dma_req = c.recv()
        # Do not answer: the server gives up after dma_timeout (0.5 s in tests).
        assert c.poll_message(0.8) is None  # posted, so no error reply either
        late = struct.pack("<QI", 0x10000, 4) + b"late" + b"\0" * 4
        c.send_raw(wire.build_message(dma_req.id, dma_req.cmd, late, flags=1))
        assert c.poll_message(0.1) is None  # ignored quietly
        assert c.region_read(RegionIndex.CONFIG, 0, 2) == b"\x34\x12"


def test_dma_from_device_thread(server: ServerHandle) -> None:
    """A device thread doing DMA blocks only itself; the loop keeps serving."""
    guest = bytearray(b"T" * 64)
    with server.client() as c:
        c.dma_read = lambda addr, n: bytes(guest[:n])
        c.dma_map(0x10000, 0x1000)
        dma = server.device.dma
        assert dma is not None
        result: list[bytes] = []
        t = threading.Thread(target=lambda: result.append(dma.read(0x10000, 8)))
        t.start()
        assert c.serve_dma(0.3) == 1
        t.join(2)
        assert result == [b"T" * 8]
        # Unmapped address from a thread: DmaError, no message.
        with pytest.raises(DmaError):
            dma.read(0x0, 4)


def test_dma_async_api(server: ServerHandle) -> None:
    import asyncio

    with server.client() as c:
        c.dma_read = lambda addr, n: b"\x42" * n
        c.dma_map(0x10000, 0x1000)
        mem = conn(server).memory
        fut = asyncio.run_coroutine_threadsafe(mem.read_async(0x10000, 16), server.loop)
        assert c.serve_dma(0.3) == 1
        assert fut.result(2) == b"\x42" * 16


def test_large_dma_is_split_by_max_xfer(server: ServerHandle) -> None:
    # The client advertises 4 KiB transfers; a 10 KiB DMA becomes 3 messages.
    c = VfioUserClient(server.path, timeout=2)
    c.negotiate({"capabilities": {"max_data_xfer_size": 4096}})
    sizes: list[int] = []

    def rd(addr: int, n: int) -> bytes:
        sizes.append(n)
        return b"z" * n

    c.dma_read = rd
    c.dma_map(0x100000, 0x10000)
    dma = server.device.dma
    assert dma is not None
    result: list[bytes] = []
    t = threading.Thread(target=lambda: result.append(dma.read(0x100000, 10240)))
    t.start()
    c.serve_dma(0.3)
    t.join(2)
    assert sizes == [4096, 4096, 2048] and result == [b"z" * 10240]
    c.close()


def test_big_dma_write_partial_sends(server: ServerHandle) -> None:
    """A 512 KiB DMA_WRITE exceeds the socket buffer: the server queues the rest."""
    got = bytearray()
    with server.client() as c:
        c.dma_write = lambda addr, data: got.extend(data)
        c.dma_map(0x100000, 1 << 20)
        dma = server.device.dma
        assert dma is not None
        data = os.urandom(512 << 10)
        t = threading.Thread(target=lambda: dma.write(0x100000, data))
        t.start()
        assert c.serve_dma(0.5) == 1
        t.join(2)
        assert bytes(got) == data
        assert c.region_read(RegionIndex.CONFIG, 0, 2) == b"\x34\x12"
