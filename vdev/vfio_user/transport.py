"""Message framing on a UNIX stream socket with SCM_RIGHTS fds.

vfio-user frames are self-delimiting (header size field).  Fds are attached
by the sender to the first byte of the message they belong to, sent with the
whole message in one `sendmsg` (docs/vfio-user-qemu.md §2.3).

The reader takes whatever the socket holds with one `recvmsg_into` into a
buffer it keeps, so a request costs one receive call however it is framed
(QEMU's config access is a 32-byte REGION_READ, or 16 + 16 + data for a
write), and cuts messages out of the buffer by their size fields.  Fds are
attributed by what Linux's AF_UNIX stream receive guarantees
(net/unix/af_unix.c, unix_stream_read_generic): one call never returns bytes
queued after a buffer that carried fds (it stops right after passing them
on), and a sender's fds ride on the first buffer of its `sendmsg`.  So when a
call returns fds, they came with the last buffer it read, which begins the
message of a sender that sends each message in one `sendmsg`: the fds belong
to the message the call's last byte belongs to.  Fds that would fall to a
message already complete when they arrive cannot happen with such a sender
and are treated as a broken stream.  Works on blocking and non-blocking
sockets.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
from typing import NamedTuple

from .errors import DropClient
from .wire import HEADER, HEADER_SIZE, MAX_MESSAGE_SIZE, RECV_FDS, REGION_MESSAGE, Command

_FD_SIZE = array.array("i").itemsize
_CMSG_SPACE = socket.CMSG_SPACE(RECV_FDS * _FD_SIZE)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)  # plain ints: enum operators are slow
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
#: (id, cmd, size, flags, error) of exactly HEADER_SIZE bytes (wire.Header's layout).
_unpack_header = HEADER.struct.unpack_from
#: A whole REGION_READ request, or the head of a REGION_WRITE: header + access.
_unpack_region_message = REGION_MESSAGE.struct.unpack_from
_REGION_MESSAGE_SIZE = REGION_MESSAGE.size
_REGION_CMDS = (int(Command.REGION_READ), int(Command.REGION_WRITE))
#: Receive buffer: room for many small messages (posted writes, DMA maps come in
#: bursts); a bigger message gets a buffer of its own size while it is read.
_BUFFER_SIZE = 64 * 1024


class Message(NamedTuple):
    """One received message: decoded header fields, payload and fds (a list the
    handlers may take fds out of)."""

    id: int
    cmd: int
    size: int
    flags: int
    error: int
    payload: bytes
    fds: list[int]

    @property
    def raw_header(self) -> tuple[int, int, int, int, int]:
        return (self.id, self.cmd, self.size, self.flags, self.error)


#: Message from (id, cmd, size, flags, error) + (payload, fds) without a Python-level
#: __new__ (a Message per config access).
_new_tuple = tuple.__new__


class PeerClosed(DropClient):
    """EOF exactly at a message boundary: an orderly disconnect."""


def _receive_failed(exc: OSError) -> None:
    """Returns when the receive just found nothing to read (or was interrupted);
    raises what a failed one means: TimeoutError (a socket timeout, state kept),
    DropClient (reset, or any other error)."""
    if isinstance(exc, (BlockingIOError, InterruptedError)):
        return
    if isinstance(exc, TimeoutError):
        raise exc
    if isinstance(exc, ConnectionResetError):
        raise DropClient("connection reset by peer") from exc
    if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
        return
    raise DropClient(f"recvmsg failed: {exc}") from exc


class MessageReader:
    """Incremental reader: `poll()` returns a complete Message or None.

    Raises PeerClosed on a clean EOF, DropClient on anything that leaves the
    stream unusable (EOF mid-message, reset, bad size field, truncated fds).
    With a socket timeout, TimeoutError propagates and the partial state is kept.
    """

    def __init__(self, sock: socket.socket, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._sock = sock
        self._max_size = max_size
        self._buf = bytearray(_BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0  # first buffered byte not yet returned in a message
        self._end = 0  # end of the buffered bytes
        # Fds received and the buffer offset of the message they belong to.
        self._fds: list[int] = []
        self._fds_at = -1
        #: Bytes received and not yet returned in a message (0: nothing buffered).
        self.buffered = 0

    def close_fds(self) -> None:
        """Close fds of a partially received message (on drop)."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def has_message(self) -> bool:
        """True when poll() can return a message (or fail) without a receive call."""
        have = self._end - self._start
        if have < HEADER_SIZE:
            return False
        size = _unpack_header(self._buf, self._start)[2]
        return have >= size or not HEADER_SIZE <= size <= self._max_size

    def poll(self) -> Message | None:
        """The next message, from the buffer or after one receive call (several on a
        blocking socket while a message is incomplete); None if none is complete."""
        while True:
            start, end = self._start, self._end
            if end - start >= HEADER_SIZE:
                hdr = _unpack_header(self._buf, start)
                size = hdr[2]
                if not HEADER_SIZE <= size <= self._max_size:
                    raise DropClient(
                        f"bad size field {size} in header (id {hdr[0]}, cmd {hdr[1]})")
                stop = start + size
                if stop <= end:  # a whole message is buffered
                    payload = bytes(self._view[start + HEADER_SIZE : stop])
                    fds: list[int] = []
                    if self._fds and self._fds_at == start:
                        fds, self._fds, self._fds_at = self._fds, [], -1
                    if stop == end:
                        self._start = self._end = self.buffered = 0
                        if len(self._buf) > _BUFFER_SIZE:  # a big message was consumed
                            self._buf = bytearray(_BUFFER_SIZE)
                            self._view = memoryview(self._buf)
                    else:
                        self._start = stop
                        self.buffered = end - stop
                    return _new_tuple(Message, hdr + (payload, fds))
            if end:
                self._make_room()
                end = self._end
            got = self._recvmsg(self._view[end:] if end else self._view)
            if got is None:
                return None
            self._received(end, *got)

    def receive_access(self) -> tuple[tuple[int, ...], bytes] | None:
        """One receive call into the empty buffer (callers check `buffered` is 0).

        When it brings exactly one whole REGION_READ or REGION_WRITE and no fds, the
        message a guest's config accesses are made of, return its header and access
        fields (id, cmd, size, flags, error, offset, region, count: wire.REGION_MESSAGE,
        one struct call) and the written data, and keep nothing.  Anything else stays
        buffered for poll(), as poll() would have received it (None; `buffered` says
        whether anything came)."""
        try:  # _recvmsg(), inline: this is the one receive of a config access
            n, ancdata, msg_flags, _ = self._sock.recvmsg_into(
                [self._view], _CMSG_SPACE, _MSG_CMSG_CLOEXEC)
        except OSError as exc:
            _receive_failed(exc)
            return None
        if n >= _REGION_MESSAGE_SIZE and not ancdata and not msg_flags & _MSG_CTRUNC:
            fields = _unpack_region_message(self._buf)
            if fields[2] == n and fields[1] in _REGION_CMDS:
                return fields, (bytes(self._view[_REGION_MESSAGE_SIZE:n])
                                if n > _REGION_MESSAGE_SIZE else b"")
        self._received(0, n, ancdata, msg_flags)
        return None

    def _recvmsg(self, into: memoryview) -> tuple[int, list[tuple[int, int, bytes]], int] | None:
        """One recvmsg_into (fds collected by the caller); None when nothing can be read."""
        try:
            n, ancdata, msg_flags, _ = self._sock.recvmsg_into(
                [into], _CMSG_SPACE, _MSG_CMSG_CLOEXEC)
        except OSError as exc:
            _receive_failed(exc)
            return None
        return n, ancdata, msg_flags

    def _received(self, end: int, n: int, ancdata: list[tuple[int, int, bytes]],
                  msg_flags: int) -> None:
        """Account for `n` bytes received at buffer offset `end`, and their fds."""
        self._end = end + n
        self.buffered = self._end - self._start
        if ancdata:
            self._collect_fds(ancdata, self._end - 1)
        if msg_flags & _MSG_CTRUNC:
            raise DropClient(f"fds truncated (more than {RECV_FDS} in one message)")
        if not n:
            self._eof(end - self._start)

    def _make_room(self) -> None:
        """Room after the buffered bytes for the rest of the partial message at the
        front (or at least its header): move it to offset 0, or grow the buffer."""
        start, end = self._start, self._end
        need = HEADER_SIZE
        if end - start >= HEADER_SIZE:
            need = max(need, _unpack_header(self._buf, start)[2])  # poll() checked it
        if start + need <= len(self._buf) and end < len(self._buf):
            return
        buf = self._buf if need <= len(self._buf) else bytearray(need)
        buf[: end - start] = self._view[start:end]
        self._buf, self._view = buf, memoryview(buf)
        self._start, self._end = 0, end - start
        self.buffered = self._end
        if self._fds:
            self._fds_at -= start

    def _eof(self, have: int) -> None:
        if not have and not self._fds:
            raise PeerClosed("client disconnected")
        if have < HEADER_SIZE:
            where, total = "header", HEADER_SIZE
        else:
            where, total = "body", _unpack_header(self._buf, self._start)[2]
        raise DropClient(f"EOF inside a message {where} after {have} of {total} bytes")

    def _message_at(self, offset: int) -> int:
        """Buffer offset of the message that the buffered byte at `offset` is part of."""
        pos = self._start
        while self._end - pos >= HEADER_SIZE:
            size = _unpack_header(self._buf, pos)[2]
            if size < HEADER_SIZE or pos + size > offset:
                break
            pos += size
        return pos

    def _collect_fds(self, ancdata: list[tuple[int, int, bytes]], last: int) -> None:
        fds = array.array("i")
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(cdata[: len(cdata) - (len(cdata) % _FD_SIZE)])
        if not fds:
            return
        owner = self._message_at(max(last, self._start))
        pending = bool(self._fds)
        self._fds.extend(fds)  # closed by close_fds() if the client is dropped
        if pending and self._fds_at != owner:
            raise DropClient("fds for two messages in one receive")
        self._fds_at = owner


def sendmsg_all(sock: socket.socket, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> int:
    """One `sendmsg` of a whole message with its fds; returns bytes sent.

    On a blocking socket the kernel sends everything or raises; callers on
    non-blocking sockets must queue the remainder (the fds went with byte 0).
    """
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    return sock.sendmsg([data], anc)
