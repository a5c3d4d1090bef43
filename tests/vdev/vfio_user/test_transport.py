"""MessageReader: whole messages out of one receive buffer, fds to the right message."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from vdev.vfio_user import wire
from vdev.vfio_user.errors import DropClient
from vdev.vfio_user.transport import MessageReader, PeerClosed, sendmsg_all
from vdev.vfio_user.wire import Command


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def _msg(msg_id: int, payload: bytes = b"", cmd: int = Command.REGION_READ) -> bytes:
    return wire.build_message(msg_id, cmd, payload)


def _all(reader: MessageReader) -> list[tuple[int, bytes, int]]:
    out = []
    while (m := reader.poll()) is not None:
        out.append((m.id, m.payload, len(m.fds)))
        for fd in m.fds:
            os.close(fd)
    return out


Pair = tuple[socket.socket, socket.socket]


def test_several_messages_in_one_receive_are_all_returned(pair: Pair) -> None:
    a, b = pair
    a.sendall(_msg(1, b"x" * 16) + _msg(2) + _msg(3, b"y" * 20))
    r = MessageReader(b)
    first = r.poll()
    assert first is not None and first.id == 1 and first.payload == b"x" * 16
    assert r.has_message()  # the rest is buffered: no receive call needed
    assert _all(r) == [(2, b"", 0), (3, b"y" * 20, 0)]
    assert not r.has_message()


def test_message_split_across_sends_is_reassembled(pair: Pair) -> None:
    a, b = pair
    raw = _msg(7, bytes(range(40)))
    r = MessageReader(b)
    for cut in (3, 16, 30):
        a.sendall(raw[:cut])
        assert r.poll() is None and not r.has_message()
        a.sendall(raw[cut:])
        m = r.poll()
        assert m is not None and m.id == 7 and m.payload == bytes(range(40))


def test_fds_go_to_the_message_sent_with_them(pair: Pair) -> None:
    """A message without fds, then one with an fd, in one receive: the fd belongs to the
    second (the kernel stops a receive right after the buffer that carried fds)."""
    a, b = pair
    efd = os.eventfd(0)
    try:
        a.sendall(_msg(1, b"a" * 8))
        sendmsg_all(a, _msg(2, b"b" * 8, Command.DMA_MAP), [efd])
        a.sendall(_msg(3))
        r = MessageReader(b)
        assert _all(r) == [(1, b"a" * 8, 0), (2, b"b" * 8, 1), (3, b"", 0)]
    finally:
        os.close(efd)


def test_fds_with_a_partially_received_message(pair: Pair) -> None:
    a, b = pair
    efd = os.eventfd(0)
    try:
        raw = _msg(5, b"p" * 100, Command.DMA_MAP)
        a.sendall(_msg(4))
        sendmsg_all(a, raw[:50], [efd])
        r = MessageReader(b)
        m = r.poll()
        assert m is not None and m.id == 4 and m.fds == []
        assert r.poll() is None
        a.sendall(raw[50:])
        assert _all(r) == [(5, b"p" * 100, 1)]
    finally:
        os.close(efd)


def test_message_bigger_than_the_buffer(pair: Pair) -> None:
    a, b = pair
    a.setblocking(True)
    big = os.urandom(300_000)
    r = MessageReader(b)
    a.sendall(_msg(1))
    assert _all(r) == [(1, b"", 0)]
    import threading

    t = threading.Thread(target=a.sendall, args=(_msg(2, big) + _msg(3, b"z"),))
    t.start()
    got: list[tuple[int, bytes, int]] = []
    while len(got) < 2:
        got += _all(r)
    t.join()
    assert got == [(2, big, 0), (3, b"z", 0)]
    a.sendall(_msg(4, b"q"))
    assert _all(r) == [(4, b"q", 0)]


def test_eof_at_a_boundary_and_inside_a_message(pair: Pair) -> None:
    a, b = pair
    a.sendall(_msg(1))
    r = MessageReader(b)
    assert _all(r) == [(1, b"", 0)]
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerClosed):
        r.poll()
    c, d = socket.socketpair()
    c.sendall(_msg(1, b"x" * 10)[:20])
    c.close()
    with pytest.raises(DropClient, match="EOF inside a message body after 20 of 26 bytes"):
        MessageReader(d).poll()
    d.close()


def test_bad_size_field_is_a_broken_stream(pair: Pair) -> None:
    a, b = pair
    a.sendall(_msg(1) + wire.HEADER.pack(2, 9, 8, 0, 0))
    r = MessageReader(b)
    assert r.poll() is not None
    assert r.has_message()  # poll() can fail without a receive call
    with pytest.raises(DropClient, match="bad size field 8"):
        r.poll()
