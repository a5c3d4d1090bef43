"""Coverage-guided fuzzing of the vfio-user server's receive path (see fuzz/README.md).

Each input is written to one end of a socketpair whose other end is a server
`Connection` (TeeIoEndpoint behind it); the connection's reader is called directly,
without running the event loop.  The first input byte chooses whether VERSION is
negotiated first.  Findings: any exception escaping `_on_readable` (the server
must turn every bad input into an error reply or a dropped client), and a server
that stops answering a valid request on a connection it kept open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys

import atheris

with atheris.instrument_imports():
    from vdev.endpoint.function import TeeIoEndpoint
    from vdev.vfio_user import wire
    from vdev.vfio_user.server import Connection
    from vdev.vfio_user.wire import Command

logging.disable(logging.CRITICAL)
LOOP = asyncio.new_event_loop()
DEVICE = TeeIoEndpoint()
VERSION = wire.build_message(0, Command.VERSION, struct.pack("<HH", 0, 0) + b"{}\0")
PROBE = wire.build_message(0xBEEF, Command.REGION_READ, struct.pack("<QII", 0, 7, 4))


def _drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return out
        except ConnectionResetError:  # the server dropped us with our bytes unread
            return out
        if not chunk:
            return out
        out += chunk


def test_one_input(data: bytes) -> None:
    if not data:
        return
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.setblocking(False)
    ours.setblocking(False)
    conn = Connection(DEVICE, theirs, LOOP, lambda c: None, dma_timeout=0.01)
    try:
        if data[0] & 1:
            ours.sendall(VERSION)
            conn._on_readable()
        with contextlib.suppress(BlockingIOError):
            ours.sendall(data[1:])
        for _ in range(64):  # the reader answers one request per call
            if conn.closed:
                break
            conn._on_readable()
            _drain(ours)
        if not conn.closed and len(data) > 1 and len(data) - 1 >= wire.HEADER_SIZE:
            size = struct.unpack_from("<I", data, 5)[0]
            if size == len(data) - 1:  # exactly one framed message: the stream is in sync
                ours.sendall(PROBE)
                conn._on_readable()
                if not conn.closed:
                    assert _drain(ours), "no reply to a valid REGION_READ"
    finally:
        conn.close("fuzz input done", logging.DEBUG)
        ours.close()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
