"""Message framing on a UNIX stream socket with SCM_RIGHTS fds.

vfio-user frames are self-delimiting (header size field).  Fds are attached
by the sender to the first byte of the message they belong to, sent with the
whole message in one `sendmsg` (docs/vfio-user-qemu.md §2.3).  The reader
therefore reads the 16-byte header and then exactly the body, never past the
end of a message, and attributes every fd received while reading a message's
bytes to that message.  Works on blocking and non-blocking sockets.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
from dataclasses import dataclass, field

from .errors import DropClient
from .wire import HEADER, HEADER_SIZE, MAX_MESSAGE_SIZE, RECV_FDS

_FD_SIZE = array.array("i").itemsize
_CMSG_SPACE = socket.CMSG_SPACE(RECV_FDS * _FD_SIZE)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)  # plain ints: enum operators are slow
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
#: (id, cmd, size, flags, error) of exactly HEADER_SIZE bytes (wire.Header's layout).
_unpack_header = HEADER.struct.unpack_from


@dataclass(slots=True)
class Message:
    """One received message: decoded header fields, payload and fds."""

    id: int
    cmd: int
    size: int
    flags: int
    error: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def raw_header(self) -> tuple[int, int, int, int, int]:
        return (self.id, self.cmd, self.size, self.flags, self.error)


class PeerClosed(DropClient):
    """EOF exactly at a message boundary: an orderly disconnect."""


class MessageReader:
    """Incremental reader: `poll()` returns a complete Message or None.

    Raises PeerClosed on a clean EOF, DropClient on anything that leaves the
    stream unusable (EOF mid-message, reset, bad size field, truncated fds).
    With a socket timeout, TimeoutError propagates and the partial state is kept.
    """

    def __init__(self, sock: socket.socket, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._sock = sock
        self._max_size = max_size
        self._buf = bytearray()  # a partially received header or body
        self._hdr: tuple[int, int, int, int, int] | None = None  # header once complete
        self._fds: list[int] = []

    def close_fds(self) -> None:
        """Close fds of a partially received message (on drop)."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def poll(self) -> Message | None:
        while True:
            hdr = self._hdr
            # Bytes still missing from the header, or from the body once the
            # header is known (never more: the next message's fds must not be
            # received with this one's bytes).
            target = HEADER_SIZE if hdr is None else hdr[2] - HEADER_SIZE
            have = len(self._buf)
            try:
                data, ancdata, msg_flags, _ = self._sock.recvmsg(
                    target - have, _CMSG_SPACE, _MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                return None
            except TimeoutError:
                raise
            except ConnectionResetError as exc:
                raise DropClient("connection reset by peer") from exc
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return None
                raise DropClient(f"recvmsg failed: {exc}") from exc
            if ancdata:
                self._collect_fds(ancdata)
            if msg_flags & _MSG_CTRUNC:
                raise DropClient(f"fds truncated (more than {RECV_FDS} in one message)")
            if not data:
                if not have and hdr is None and not self._fds:
                    raise PeerClosed("client disconnected")
                if hdr is None:
                    where, got, total = "header", have, HEADER_SIZE
                else:
                    where, got, total = "body", HEADER_SIZE + have, hdr[2]
                raise DropClient(f"EOF inside a message {where} after {got} of {total} bytes")
            if have or len(data) < target:
                self._buf += data
                if len(self._buf) < target:
                    continue
                data = bytes(self._buf)
                self._buf = bytearray()
            if hdr is None:
                hdr = _unpack_header(data)
                size = hdr[2]
                if size < HEADER_SIZE or size > self._max_size:
                    raise DropClient(
                        f"bad size field {size} in header (id {hdr[0]}, cmd {hdr[1]})"
                    )
                if size > HEADER_SIZE:
                    self._hdr = hdr
                    continue
                data = b""
            msg = Message(hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], data, self._fds)
            self._hdr = None
            self._fds = []
            return msg

    def _collect_fds(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[: len(cdata) - (len(cdata) % _FD_SIZE)])
                self._fds.extend(fds)


def sendmsg_all(sock: socket.socket, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> int:
    """One `sendmsg` of a whole message with its fds; returns bytes sent.

    On a blocking socket the kernel sends everything or raises; callers on
    non-blocking sockets must queue the remainder (the fds went with byte 0).
    """
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    return sock.sendmsg([data], anc)
