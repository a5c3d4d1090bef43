"""The spdm-emu client against a responder that writes each frame in several send()
calls without TCP_NODELAY, as DMTF's spdm_responder_emu and QEMU's spdm-socket do
(docs/protocols.md §9.4).

Nagle's algorithm holds the peer's second write until its first is acknowledged; a Linux
receiver in request/response mode delays that ACK (40 ms minimum on Linux), so unless the
client re-arms TCP_QUICKACK after every read, each exchange stalls.  The peer here is a
real socket: the stall is the kernel's, not simulated.  We count exchanges slower than
STALL (a generous bound: a loopback exchange otherwise takes well under a millisecond),
not total time.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from vdev.spdm_emu import client as client_module
from vdev.spdm_emu.client import SpdmEmuClient
from vdev.spdm_emu.frame import Command

EXCHANGES = 40
STALL = 0.030  # seconds; the delayed-ACK timer is at least 40 ms

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="TCP_QUICKACK and delayed-ACK timing are Linux's")


def _split_writer(server: socket.socket) -> None:
    """Answer every frame with the same frame, written as four send() calls (the three
    big-endian header words, then the payload), with Nagle left on."""
    conn, _ = server.accept()
    with conn:
        buf = b""
        while True:
            while len(buf) < 12:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            command, transport, size = struct.unpack(">III", buf[:12])
            while len(buf) < 12 + size:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            payload, buf = buf[12:12 + size], buf[12 + size:]
            for word in (command, transport, size):
                conn.send(struct.pack(">I", word))
            conn.send(payload)
            if command == Command.SHUTDOWN:
                return


@pytest.fixture
def split_writer() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    thread = threading.Thread(target=_split_writer, args=(server,), daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    thread.join(timeout=5)
    server.close()


def _stalls(port: int) -> int:
    stalls = 0
    with SpdmEmuClient("127.0.0.1", port) as client:
        for i in range(EXCHANGES):
            payload = bytes([i]) * 64
            started = time.perf_counter()
            reply = client.request(Command.NORMAL, payload)
            if time.perf_counter() - started > STALL:
                stalls += 1
            assert reply.command == Command.NORMAL and reply.payload == payload
        client.shutdown()
    return stalls


def test_quickack_rearmed_after_each_read_avoids_the_stalls(split_writer: int) -> None:
    # Generous: scheduling hiccups on a loaded machine may cost an exchange or two.
    assert _stalls(split_writer) <= EXCHANGES // 5


def test_without_quickack_the_same_peer_stalls(split_writer: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the rig does reproduce the stall the client avoids."""
    monkeypatch.setattr(client_module, "rearm_quickack", lambda sock: None)
    assert _stalls(split_writer) >= EXCHANGES // 2
