"""Random and mutated vfio-user messages into a live server (TeeIoEndpoint behind it).

Invariants, for every example:
- the server thread survives and logs no ERROR (a device exception on client input
  would be logged by the server's last-resort handler as "failed in the device");
- a well-framed request that is not posted gets exactly one reply with its id and
  command, an error reply (REPLY|ERROR) if it was refused;
- a badly framed one (size field) is dropped cleanly: EOF, never a hang;
- afterwards the NEXT client negotiates, reads config space and walks DOE discovery.

The messages are built from structured field strategies for each command (so they
reach the handlers, not only the header checks) and then optionally mutated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.budget import examples
from vdev.doe.requester import DoeRequester
from vdev.endpoint.function import TeeIoEndpoint
from vdev.pci.device_api import RegionIndex
from vdev.vfio_user import wire
from vdev.vfio_user.client import VfioUserClient, make_memfd
from vdev.vfio_user.threaded import ThreadedServer, serve_in_thread
from vdev.vfio_user.transport import DropClient
from vdev.vfio_user.wire import Command

pytestmark = pytest.mark.timeout(120)

DOE_CAP = 0x100
_u32 = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 7, 8, 16, 0x1000, 0xFFFF_FFFF]),
                 st.integers(0, 0xFFFF_FFFF))
_u64 = st.one_of(st.sampled_from([0, 4, 0xFFC, 0x1000, 0xFFFF_FFFF, 1 << 63, (1 << 64) - 1]),
                 st.integers(0, (1 << 64) - 1))
_region = st.one_of(st.integers(0, 9), _u32)
_cfg_offset = st.one_of(st.integers(0, 0x1000), st.sampled_from(
    [DOE_CAP + r for r in range(0, 0x18, 4)]), _u64)
_count = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 8, 4096, 4097]), st.integers(0, 0x2000))


@st.composite
def _payload(draw: st.DrawFn, cmd: int) -> bytes:
    """A payload shaped like `cmd`'s (fields drawn), or any bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=80))
    if cmd == Command.VERSION:
        body = draw(st.sampled_from([b"{}", b'{"capabilities":{"max_msg_fds":-1}}',
                                     b'{"capabilities":{"max_data_xfer_size":0}}',
                                     b'{"capabilities":[]}', b"[]", b"\xff\xfe", b"{"]))
        return struct.pack("<HH", draw(st.integers(0, 3)), draw(st.integers(0, 3))) + body + (
            b"\0" if draw(st.booleans()) else b"")
    if cmd == Command.DMA_MAP:
        return struct.pack("<IIQQQ", draw(_u32), draw(st.integers(0, 7)), draw(_u64),
                           draw(_u64), draw(_u64))
    if cmd == Command.DMA_UNMAP:
        return struct.pack("<IIQQ", draw(_u32), draw(st.integers(0, 7)), draw(_u64), draw(_u64))
    if cmd in (Command.DEVICE_GET_INFO, Command.DEVICE_GET_IRQ_INFO):
        return struct.pack("<IIII", draw(_u32), draw(_u32), draw(_region), draw(_u32))
    if cmd == Command.DEVICE_GET_REGION_INFO:
        return struct.pack("<IIIIQQ", draw(_u32), draw(_u32), draw(_region), 0, 0, 0)
    if cmd == Command.DEVICE_SET_IRQS:
        count = draw(st.integers(0, 12))
        return struct.pack("<IIIII", draw(_u32), draw(_u32), draw(st.integers(0, 6)),
                           draw(st.integers(0, 40)), count) + draw(st.binary(max_size=count))
    if cmd == Command.REGION_READ:
        return struct.pack("<QII", draw(_cfg_offset), draw(_region), draw(_count))
    if cmd == Command.REGION_WRITE:
        data = draw(st.binary(max_size=16))
        count = len(data) if draw(st.booleans()) else draw(_count)
        return struct.pack("<QII", draw(_cfg_offset), draw(_region), count) + data
    if cmd == Command.REGION_WRITE_MULTI:
        entries = draw(st.lists(st.tuples(_cfg_offset, _region, st.integers(0, 12),
                                          st.binary(min_size=8, max_size=8)), max_size=4))
        n = len(entries) if draw(st.booleans()) else draw(_u64)
        return struct.pack("<Q", n) + b"".join(struct.pack("<QII", *e[:3]) + e[3]
                                               for e in entries)
    if cmd in (Command.DMA_READ, Command.DMA_WRITE):
        return struct.pack("<QI", draw(_u64), draw(_u32)) + draw(st.binary(max_size=16))
    return draw(st.binary(max_size=32))


@st.composite
def _message(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(raw message, framed): framed means the size field matches the bytes."""
    cmd = draw(st.one_of(st.sampled_from([int(c) for c in Command]), st.integers(0, 0xFFFF)))
    payload = draw(_payload(cmd))
    flags = draw(st.one_of(st.just(0), st.just(int(wire.HeaderFlags.NO_REPLY)),
                           st.sampled_from([1, 2, 0x20, 0x21, 0x30]), _u32))
    msg_id = draw(st.integers(0, 0xFFFF))
    raw = bytearray(wire.build_message(msg_id, cmd, payload, flags=flags,
                                       error=draw(st.sampled_from([0, 0, 1, 0xFFFF_FFFF]))))
    mutation = draw(st.integers(0, 5))
    if mutation == 1 and len(raw) > wire.HEADER_SIZE:  # flip a payload byte
        pos = draw(st.integers(wire.HEADER_SIZE, len(raw) - 1))
        raw[pos] ^= draw(st.integers(1, 255))
    elif mutation == 2:  # size field: anything
        raw[4:8] = struct.pack("<I", draw(st.one_of(_u32, st.integers(0, len(raw) + 8))))
    framed = struct.unpack_from("<I", raw, 4)[0] == len(raw)
    return bytes(raw), framed


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ThreadedServer[TeeIoEndpoint], ErrorLog]]:
    errors = ErrorLog()
    logger = logging.getLogger("vdev")
    logger.addHandler(errors)
    try:
        with serve_in_thread(lambda loop: TeeIoEndpoint(), name="fuzz", dma_timeout=0.2) as s:
            yield s, errors
    finally:
        logger.removeHandler(errors)


def _reply(c: VfioUserClient, timeout: float) -> wire.Container | None:
    """The server's next reply (skipping server-initiated requests); None on EOF."""
    while True:
        try:
            reply = c.recv(timeout)
        except TimeoutError:
            raise
        except (DropClient, OSError):  # EOF or reset: the server dropped us
            return None
        if reply.flags & wire.TYPE_MASK == wire.REQUEST:
            continue  # a DMA request from the device: not answered, the server times out
        return reply


def _next_client_works(path: str) -> None:
    with VfioUserClient(path, timeout=5.0) as c:
        c.negotiate()
        assert c.region_read(RegionIndex.CONFIG, 0, 2) != b"\xff\xff"

        def read32(off: int) -> int:
            return int.from_bytes(c.region_read(RegionIndex.CONFIG, off, 4), "little")

        def write32(off: int, value: int) -> None:
            c.region_write(RegionIndex.CONFIG, off, value.to_bytes(4, "little"))

        doe = DoeRequester(read32, write32, DOE_CAP)
        doe.abort()  # like pci_doe_create_mb: whatever the last client left behind
        assert doe.discover() == [(1, 0), (1, 1), (1, 2)]


def _drive(path: str, msgs: list[tuple[bytes, bool]], negotiate: bool) -> None:
    c = VfioUserClient(path, timeout=5.0)
    try:
        if negotiate:
            c.negotiate()
        for raw, framed in msgs:
            msg_id, cmd, _, flags, _ = wire.unpack_header(raw)
            try:
                c.send_raw(raw)
            except (BrokenPipeError, ConnectionResetError):
                return  # dropped by an earlier message
            if not framed:
                # Either the server drops us (size out of bounds) or waits for the
                # rest of a message that never comes: both are fine, the stream is
                # desynchronised, so this connection is done.
                return
            if flags & wire.HeaderFlags.NO_REPLY:
                continue
            try:
                reply = _reply(c, 5.0)
            except TimeoutError:
                pytest.fail(f"no reply to {raw[:32].hex()}")
            if reply is None:
                return  # dropped: allowed only for stream-level problems
            assert (reply.id, reply.cmd) == (msg_id, cmd), raw.hex()
            assert reply.flags & wire.TYPE_MASK == wire.REPLY
            if reply.flags & wire.HeaderFlags.ERROR:
                assert reply.error != 0 and reply.payload == b""
    finally:
        with contextlib.suppress(OSError):
            c.sock.shutdown(socket.SHUT_RDWR)
        c.close()


@examples(150)
@given(st.lists(_message(), min_size=1, max_size=6), st.booleans())
def test_random_messages_never_break_the_server(
    served: tuple[ThreadedServer[TeeIoEndpoint], ErrorLog],
    msgs: list[tuple[bytes, bool]], negotiate: bool,
) -> None:
    server, errors = served
    errors.records.clear()
    _drive(server.path, msgs, negotiate)
    _next_client_works(server.path)
    assert not errors.records, [r.getMessage() for r in errors.records]


@examples(150)
@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=4))
def test_random_bytes_never_break_the_server(
    served: tuple[ThreadedServer[TeeIoEndpoint], ErrorLog], chunks: list[bytes],
) -> None:
    server, errors = served
    errors.records.clear()
    c = VfioUserClient(server.path, timeout=5.0)  # the previous client may still be leaving
    try:
        c.negotiate()
        for chunk in chunks:
            with contextlib.suppress(OSError):
                c.send_raw(chunk)
        with contextlib.suppress(OSError, DropClient):
            while c.poll_message(0.05) is not None:
                pass
    finally:
        c.close()
    _next_client_works(server.path)
    assert not errors.records, [r.getMessage() for r in errors.records]


def _wait_gone(server: ThreadedServer[TeeIoEndpoint]) -> None:
    deadline = time.monotonic() + 2
    while server.server.connection is not None:
        assert time.monotonic() < deadline, "the server kept a closed client"
        time.sleep(0.002)


@st.composite
def _fd_message(draw: st.DrawFn) -> tuple[bytes, int, str]:
    """DMA_MAP or SET_IRQS (sometimes another command) with fields drawn, plus how many
    fds of which kind to attach."""
    cmd = draw(st.sampled_from([Command.DMA_MAP] * 3 + [Command.DEVICE_SET_IRQS] * 3
                               + [Command.REGION_READ, Command.DMA_UNMAP, Command.VERSION]))
    if cmd == Command.DMA_MAP:
        size = draw(st.sampled_from([0, 4096, 1 << 16, 1 << 20, (1 << 20) + 4096, 1 << 40]))
        payload = struct.pack("<IIQQQ", 32, draw(st.integers(0, 7)),
                              draw(st.sampled_from([0, 4096, 1 << 20, (1 << 64) - 4096])),
                              draw(st.sampled_from([0, 1 << 20, 1 << 32, (1 << 64) - 4096])),
                              size)
    elif cmd == Command.DEVICE_SET_IRQS:
        count = draw(st.integers(0, 6))
        payload = struct.pack("<IIIII", 20, draw(st.sampled_from([0x24, 0x21, 0x22, 0x28, 0x14,
                                                                   0x04, 0xFF])),
                              draw(st.integers(0, 5)), draw(st.integers(0, 10)), count)
    else:
        payload = draw(_payload(cmd))
    nfds = draw(st.integers(0, 3))
    kind = draw(st.sampled_from(["eventfd", "memfd"]))
    return wire.build_message(draw(st.integers(0, 0xFFFF)), cmd, payload), nfds, kind


@examples(150)
@given(st.lists(_fd_message(), min_size=1, max_size=6))
def test_fds_sent_with_any_message_are_never_leaked(
    served: tuple[ThreadedServer[TeeIoEndpoint], ErrorLog],
    msgs: list[tuple[bytes, int, str]],
) -> None:
    """The server runs in this process, so /proc/self/fd counts its fds too: after the
    client is gone, every fd it was sent (mapped memfd, IRQ eventfd, refused extra)
    is closed again, and the memfds are unmapped."""
    server, errors = served
    errors.records.clear()
    _next_client_works(server.path)  # settles anything a previous example left
    _wait_gone(server)
    before = len(os.listdir("/proc/self/fd"))
    mine: list[int] = []
    c = VfioUserClient(server.path, timeout=2.0)
    try:
        c.negotiate()
        for raw, nfds, kind in msgs:
            fds = [os.eventfd(0) if kind == "eventfd" else make_memfd(1 << 20)
                   for _ in range(nfds)]
            mine += fds
            try:
                c.send_raw(raw, fds)
                _reply(c, 2.0)
            except (OSError, DropClient):
                break
    finally:
        c.close()
        for fd in mine:
            os.close(fd)
    _next_client_works(server.path)  # the previous client is gone once this one is served
    _wait_gone(server)
    assert len(os.listdir("/proc/self/fd")) <= before
    with open("/proc/self/maps") as maps:
        assert "/memfd:vfio-user-guest" not in maps.read()
    assert not errors.records, [r.getMessage() for r in errors.records]
