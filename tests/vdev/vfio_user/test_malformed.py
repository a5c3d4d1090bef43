"""Bad input never crashes the server: error replies in sync, clean drops otherwise."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct

import pytest

from tests.vdev.vfio_user.conftest import ServerHandle, wait_for
from vdev.pci.device_api import IrqIndex, RegionIndex
from vdev.vfio_user import wire
from vdev.vfio_user.client import VfioUserClient, make_memfd
from vdev.vfio_user.transport import Message
from vdev.vfio_user.wire import Command

pytestmark = pytest.mark.timeout(10)


def expect_error(c: VfioUserClient, msg_id: int, cmd: int, err: int) -> Message:
    reply = c.recv()
    assert (reply.id, reply.cmd, reply.flags, reply.error, reply.size) == (
        msg_id, cmd, 0x21, err, 16)
    assert reply.payload == b"" and reply.fds == []
    return reply


def still_works(server: ServerHandle, c: VfioUserClient | None = None) -> None:
    if c is None:
        with server.client() as c2:
            assert c2.region_read(RegionIndex.CONFIG, 0, 2) == b"\x34\x12"
    else:
        assert c.region_read(RegionIndex.CONFIG, 0, 2) == b"\x34\x12"


def test_unknown_command_enotsup(server: ServerHandle) -> None:
    with server.client() as c:
        for cmd in (0, 6, 14, 16, 99, 0xFFFF):
            c.send_raw(wire.build_message(0x4242, cmd, b"\1\2\3\4"))
            expect_error(c, 0x4242, cmd, errno.ENOTSUP)
        # Server-to-client commands sent as requests are not ours to serve.
        c.send_raw(wire.build_message(5, Command.DMA_READ, b"\0" * 16))
        expect_error(c, 5, Command.DMA_READ, errno.ENOTSUP)
        still_works(server, c)


def test_unknown_command_posted_gets_nothing(server: ServerHandle) -> None:
    with server.client() as c:
        c.send_raw(wire.build_message(1, 99, flags=wire.HeaderFlags.NO_REPLY))
        assert c.poll_message(0.2) is None
        still_works(server, c)


@pytest.mark.parametrize(
    ("cmd", "payload"),
    [
        (Command.DMA_MAP, b"\0" * 8),  # too short
        (Command.DMA_UNMAP, b""),
        (Command.DEVICE_GET_INFO, struct.pack("<IIII", 8, 0, 0, 0)),  # argsz too small
        (Command.DEVICE_GET_REGION_INFO, b"\x20\0\0\0"),
        (Command.DEVICE_GET_IRQ_INFO, struct.pack("<IIII", 16, 0, 77, 0)),  # bad index
        (Command.DEVICE_SET_IRQS, b"\0" * 12),
        (Command.REGION_READ, b"\0" * 10),
        # REGION_WRITE whose count disagrees with the bytes that came with it.
        (Command.REGION_WRITE, struct.pack("<QII", 0x40, 7, 8) + b"\1\2\3\4"),
        (Command.REGION_WRITE, struct.pack("<QII", 0x40, 7, 2) + b"\1\2\3\4"),
        (Command.REGION_WRITE_MULTI, struct.pack("<Q", 3) + b"\0" * 24),
        (Command.REGION_WRITE_MULTI, struct.pack("<Q", 1)
         + struct.pack("<QII", 0, 7, 9) + b"\0" * 8),  # entry count > 8
    ],
)
def test_malformed_payload_einval(server: ServerHandle, cmd: int, payload: bytes) -> None:
    with server.client() as c:
        c.send_raw(wire.build_message(77, cmd, payload))
        expect_error(c, 77, cmd, errno.EINVAL)
        still_works(server, c)


def test_region_read_out_of_range_raw(server: ServerHandle) -> None:
    with server.client() as c:
        c.send_raw(wire.build_message(3, Command.REGION_READ,
                                      struct.pack("<QII", 0, 12, 4)))
        expect_error(c, 3, Command.REGION_READ, errno.EINVAL)
        c.send_raw(wire.build_message(4, Command.REGION_READ,
                                      struct.pack("<QII", 0xFFC, 7, 8)))
        expect_error(c, 4, Command.REGION_READ, errno.EINVAL)


def test_bad_version(server: ServerHandle) -> None:
    c = server.client(negotiate=False)
    c.send_raw(wire.build_message(0, Command.VERSION, struct.pack("<HH", 1, 0) + b"{}\0"))
    expect_error(c, 0, Command.VERSION, errno.ENOTSUP)
    c.send_raw(wire.build_message(1, Command.VERSION, struct.pack("<HH", 0, 0) + b"[1]\0"))
    expect_error(c, 1, Command.VERSION, errno.EINVAL)
    c.send_raw(wire.build_message(2, Command.VERSION, struct.pack("<HH", 0, 0) + b"{no"))
    expect_error(c, 2, Command.VERSION, errno.EINVAL)  # no NUL terminator
    c.send_raw(wire.build_message(3, Command.VERSION, struct.pack("<HH", 0, 0) + b"{x\0"))
    expect_error(c, 3, Command.VERSION, errno.EINVAL)  # not JSON
    c.negotiate()
    still_works(server, c)
    c.close()


def test_fds_on_wrong_commands_are_refused_and_closed(server: ServerHandle) -> None:
    efd = os.eventfd(0)
    fds_before = len(os.listdir("/proc/self/fd"))
    try:
        with server.client() as c:
            c.send_raw(wire.build_message(9, Command.REGION_READ,
                                          struct.pack("<QII", 0, 7, 4)), [efd])
            expect_error(c, 9, Command.REGION_READ, errno.EINVAL)
            c.send_raw(wire.build_message(10, Command.DEVICE_RESET), [efd, efd])
            expect_error(c, 10, Command.DEVICE_RESET, errno.EINVAL)
            assert server.device.resets == 0
            # A posted write with an fd: refused silently, fd closed.
            c.send_raw(wire.build_message(11, Command.REGION_WRITE,
                                          struct.pack("<QII", 0x40, 7, 1) + b"\1",
                                          flags=wire.HeaderFlags.NO_REPLY), [efd])
            assert c.poll_message(0.2) is None
            still_works(server, c)
            # The server kept none of the fds it was sent.
            conn = server.server.connection
            assert conn is not None
            assert all(conn.irq.fd(i, v) is None for i in range(5) for v in range(4))
        wait_for(lambda: server.server.connection is None)
        # Same process: every fd the server received was closed again.
        assert len(os.listdir("/proc/self/fd")) == fds_before
    finally:
        os.close(efd)


def test_unmatched_reply_and_bad_type(server: ServerHandle) -> None:
    with server.client() as c:
        c.send_raw(wire.build_message(0x777, Command.DMA_READ, b"\0" * 16, flags=1))
        expect_error(c, 0x777, Command.DMA_READ, errno.EINVAL)
        c.send_raw(wire.build_message(8, Command.REGION_READ,
                                      struct.pack("<QII", 0, 7, 4), flags=0x5))
        expect_error(c, 8, Command.REGION_READ, errno.EINVAL)
        still_works(server, c)


def dropped(server: ServerHandle, c: VfioUserClient) -> None:
    """The server closed the connection: EOF on our side, device detached."""
    c.sock.settimeout(2)
    with contextlib.suppress(ConnectionResetError):
        assert c.sock.recv(64) == b""
    wait_for(lambda: server.server.connection is None)
    c.close()


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("<HHIII", 1, Command.REGION_READ, 8, 0, 0),  # size < 16
        struct.pack("<HHIII", 1, Command.REGION_WRITE, 0, 0, 0),
        struct.pack("<HHIII", 1, Command.REGION_WRITE, 0x7FFFFFFF, 0, 0),  # absurd
        struct.pack("<HHIII", 1, Command.REGION_WRITE, wire.MAX_MESSAGE_SIZE + 1, 0, 0),
    ],
)
def test_bad_size_field_drops_client(server: ServerHandle, raw: bytes,
                                     caplog: pytest.LogCaptureFixture) -> None:
    c = server.client()
    with caplog.at_level(logging.WARNING, logger="vdev.vfio_user"):
        c.send_raw(raw)
        dropped(server, c)
    drops = [r for r in caplog.records if "client dropped" in r.getMessage()]
    assert len(drops) == 1 and "size field" in drops[0].getMessage()
    still_works(server)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x01\x00\x09",  # short header
        struct.pack("<HHIII", 1, Command.REGION_WRITE, 64, 0, 0) + b"\0" * 10,  # short body
    ],
)
def test_truncated_message_then_eof(server: ServerHandle, raw: bytes,
                                    caplog: pytest.LogCaptureFixture) -> None:
    c = server.client()
    with caplog.at_level(logging.WARNING, logger="vdev.vfio_user"):
        c.send_raw(raw)
        c.sock.shutdown(socket.SHUT_WR)
        dropped(server, c)
    assert any("EOF inside a message" in r.getMessage() for r in caplog.records)
    still_works(server)


def test_kill_client_any_moment_releases_everything(server: ServerHandle) -> None:
    fd = make_memfd(1 << 20)
    efd = os.eventfd(0)
    try:
        c = server.client()
        c.dma_map(0, 1 << 20, fd=fd)
        c.dma_map(1 << 30, 4096)
        c.set_irq_eventfds(IrqIndex.MSIX, 0, [efd])
        conn = server.server.connection
        assert conn is not None
        server_efd = conn.irq.fd(IrqIndex.MSIX, 0)
        assert server_efd is not None
        # Abortive close (RST) in the middle of a message.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.send_raw(struct.pack("<HHIII", 5, Command.REGION_WRITE, 40, 0, 0))
        c.close()
        wait_for(lambda: server.server.connection is None)
        assert conn.closed and len(conn.dma_table) == 0
        assert conn.dma_table.mapped_files == 0
        assert conn.irq.fd(IrqIndex.MSIX, 0) is None
        with pytest.raises(OSError):
            os.fstat(server_efd)  # the server's duplicate is closed
        assert server.device.detaches == 1 and server.device.irq is None
    finally:
        os.close(fd)
        os.close(efd)
    still_works(server)
    assert server.device.attaches == 2


def test_clean_disconnect_and_reconnect(server: ServerHandle,
                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vdev.vfio_user"):
        for _ in range(3):
            still_works(server)
            wait_for(lambda: server.server.connection is None)
    assert server.device.attaches == 3 and server.device.detaches == 3
    assert sum("client disconnected" in r.getMessage() for r in caplog.records) == 3


def test_too_many_fds_in_one_message(server: ServerHandle) -> None:
    efds = [os.eventfd(0) for _ in range(20)]
    try:
        c = server.client()
        # 20 fds exceed the 16-fd cmsg buffer: fds truncated, stream unusable -> drop.
        payload = wire.build(wire.SetIrqs, argsz=20, flags=0x24, index=2, start=0,
                             count=20, data=b"")
        c.send_raw(wire.build_message(1, Command.DEVICE_SET_IRQS, payload), efds)
        dropped(server, c)
    finally:
        for fd in efds:
            os.close(fd)
    still_works(server)
