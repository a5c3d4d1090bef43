"""A small synchronous vfio-user client (tests, `make bench`, debugging).

Blocking socket with a timeout on every wait, so callers never hang.  While
waiting for a reply it answers the server's DMA_READ/DMA_WRITE requests with
the `dma_read`/`dma_write` callbacks, in QEMU's layout (wire.DmaData), like
QEMU does from its main loop.  `send_raw`/`recv`/`poll_message` give
byte-level access for negative tests.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from construct import StreamError

from . import wire
from .errors import VfioUserError
from .transport import Message, MessageReader, sendmsg_all
from .wire import Command, MsgType

# Hot-path constants as plain ints (enum operators are Python-level calls).
_NO_REPLY = wire.NO_REPLY
_TYPE_MASK = wire.TYPE_MASK
_REQUEST = wire.REQUEST
_ERROR = wire.ERROR
_REGION_READ = int(Command.REGION_READ)
_REGION_WRITE = int(Command.REGION_WRITE)
_ACCESS_DATA = wire.REGION_ACCESS_DATA
_ACCESS_DATA_SIZE = wire.REGION_ACCESS_DATA.size

DmaReadHandler = Callable[[int, int], bytes]
DmaWriteHandler = Callable[[int, bytes], None]

#: What QEMU 11 sends in VERSION (docs/vfio-user-qemu.md §3.1), minus migration.
DEFAULT_CLIENT_CAPS: dict[str, Any] = {
    "capabilities": {
        "max_msg_fds": 16,
        "max_data_xfer_size": wire.MAX_DATA_XFER_SIZE,
        "pgsizes": 4096,
        "max_dma_maps": 65535,
        "write_multiple": True,
    }
}


def make_memfd(size: int, name: str = "vfio-user-guest") -> int:
    """An anonymous shared-memory file of `size` bytes, like QEMU's memory-backend-memfd."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def _timeval(seconds: float) -> bytes:
    """struct timeval for SO_RCVTIMEO/SO_SNDTIMEO (0 would mean "never time out")."""
    usec = max(1, round(seconds * 1_000_000))
    return struct.pack("@ll", usec // 1_000_000, usec % 1_000_000)


class VfioUserClient:
    def __init__(self, socket_path: str, *, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(socket_path)
            # From here on the fd is blocking and the kernel enforces the
            # timeouts (SO_RCVTIMEO/SO_SNDTIMEO): Python's timeout mode would
            # poll() before every send and recvmsg, three extra syscalls on
            # each request/reply round trip.  An expired wait surfaces as
            # EAGAIN and is turned into TimeoutError below.
            self.sock.settimeout(None)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
        except OSError:
            self.sock.close()
            raise
        self._rcv_timeout = timeout
        self._reader = MessageReader(self.sock, max_size=wire.MAX_MESSAGE_SIZE + 64)
        self._next_id = 0
        self.server_caps: dict[str, Any] = {}
        self.dma_read: DmaReadHandler | None = None
        self.dma_write: DmaWriteHandler | None = None
        self.dma_requests_served = 0

    # --- plumbing ---------------------------------------------------------------

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> VfioUserClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_id(self) -> int:
        msg_id = self._next_id
        self._next_id = (msg_id + 1) & 0xFFFF  # ids wrap at 16 bits (docs/vfio-user-qemu.md §10.3)
        return msg_id

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send bytes (and fds) as they are, in one sendmsg."""
        try:
            sent = sendmsg_all(self.sock, data, tuple(fds)) if fds else self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(data[sent:])
        except BlockingIOError:  # SO_SNDTIMEO expired
            raise TimeoutError("timed out") from None

    def recv(self, timeout: float | None = None) -> Message:
        """Next message from the server, unprocessed (TimeoutError if none)."""
        wait = self.timeout if timeout is None else timeout
        if wait != self._rcv_timeout:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(wait))
            self._rcv_timeout = wait
        msg = self._reader.poll()
        if msg is None:  # SO_RCVTIMEO expired (partial state is kept)
            raise TimeoutError("timed out")
        return msg

    def poll_message(self, timeout: float = 0.2) -> Message | None:
        """A message if one arrives within `timeout`, else None."""
        try:
            return self.recv(timeout)
        except TimeoutError:
            return None

    def request(
        self,
        cmd: int,
        payload: bytes = b"",
        fds: Sequence[int] = (),
        *,
        no_reply: bool = False,
    ) -> Message | None:
        """Send a request and wait for its reply (None for NO_REPLY).

        Server requests arriving meanwhile are answered.  An error reply
        raises VfioUserError with the server's errno.
        """
        msg_id = self._next_id
        self._next_id = (msg_id + 1) & 0xFFFF  # as next_id(), inlined
        data = wire.build_message(msg_id, cmd, payload, flags=_NO_REPLY if no_reply else 0)
        if fds:
            self.send_raw(data, fds)
        else:
            try:
                sent = self.sock.send(data)
                if sent < len(data):
                    self.sock.sendall(data[sent:])
            except BlockingIOError:  # SO_SNDTIMEO expired
                raise TimeoutError("timed out") from None
        if no_reply:
            return None
        while True:
            msg = self.recv()
            if msg.flags & _TYPE_MASK == _REQUEST:
                self.handle_server_request(msg)
                continue
            if msg.id != msg_id:
                raise VfioUserError(errno.EPROTO, f"reply id {msg.id}, expected {msg_id}")
            if msg.flags & _ERROR:
                raise VfioUserError(msg.error, f"{wire.command_name(cmd)}: "
                                    f"{os.strerror(msg.error)}")
            return msg

    def serve_dma(self, timeout: float = 0.2) -> int:
        """Answer server requests until none arrives for `timeout`; returns how many."""
        served = 0
        while (msg := self.poll_message(timeout)) is not None:
            if wire.msg_type(msg.flags) != MsgType.REQUEST:
                raise VfioUserError(errno.EPROTO, f"unexpected reply id {msg.id}")
            self.handle_server_request(msg)
            served += 1
        return served

    def handle_server_request(self, msg: Message) -> None:
        """Answer one DMA_READ/DMA_WRITE in QEMU's layout (docs/vfio-user-qemu.md §4)."""
        for fd in msg.fds:
            os.close(fd)
        try:
            if msg.cmd == Command.DMA_READ and self.dma_read is not None:
                req = wire.parse(wire.DmaReadRequest, msg.payload)
                data = self.dma_read(req.offset, req.count)
                reply = wire.build(wire.DmaData, offset=req.offset, count=req.count, data=data)
            elif msg.cmd == Command.DMA_WRITE and self.dma_write is not None:
                req = wire.parse(wire.DmaData, msg.payload)
                self.dma_write(req.offset, bytes(req.data))
                reply = b""
            else:
                raise VfioUserError(errno.ENOSYS, "no handler")
        except Exception as exc:
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
            self.send_raw(wire.build_error_reply(msg.id, msg.cmd, code))
            return
        self.dma_requests_served += 1
        self.send_raw(wire.build_message(msg.id, msg.cmd, reply, flags=MsgType.REPLY))

    # --- commands -------------------------------------------------------------------

    def negotiate(self, capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
        caps = DEFAULT_CLIENT_CAPS if capabilities is None else capabilities
        reply = self._req(Command.VERSION, wire.build(
            wire.Version, major=0, minor=0, json=json.dumps(caps)))
        body = wire.parse(wire.Version, reply.payload)
        if (body.major, body.minor) != (0, 0):
            raise VfioUserError(errno.EPROTO, f"server version {body.major}.{body.minor}")
        parsed = json.loads(body.json)
        if not isinstance(parsed, dict):
            raise VfioUserError(errno.EPROTO, "server VERSION JSON is not an object")
        self.server_caps = parsed
        return parsed

    def dma_map(
        self,
        iova: int,
        size: int,
        *,
        fd: int | None = None,
        offset: int = 0,
        flags: int = wire.DmaMapFlags.READ | wire.DmaMapFlags.WRITE,
    ) -> None:
        payload = wire.build(wire.DmaMap, argsz=wire.DMA_MAP_SIZE, flags=flags,
                             offset=offset, iova=iova, size=size)
        self._req(Command.DMA_MAP, payload, () if fd is None else (fd,))

    def dma_unmap(self, iova: int, size: int, flags: int = 0) -> None:
        payload = wire.build(wire.DmaUnmap, argsz=wire.DMA_UNMAP_SIZE, flags=flags,
                             iova=iova, size=size)
        self._req(Command.DMA_UNMAP, payload)

    def get_device_info(self) -> wire.Container:
        payload = wire.build(wire.DeviceInfo, argsz=wire.DEVICE_INFO_SIZE, flags=0,
                             num_regions=0, num_irqs=0)
        return wire.parse(wire.DeviceInfo, self._req(Command.DEVICE_GET_INFO, payload).payload)

    def get_region_info(self, index: int, argsz: int = wire.REGION_INFO_SIZE) -> wire.Container:
        payload = wire.build(wire.RegionInfo, argsz=argsz, flags=0, index=index,
                             cap_offset=0, size=0, offset=0)
        reply = self._req(Command.DEVICE_GET_REGION_INFO, payload)
        return wire.parse(wire.RegionInfo, reply.payload[: wire.REGION_INFO_SIZE])

    def get_region_type(self, index: int) -> tuple[int, int] | None:
        """A region's (type, subtype) from its VFIO_REGION_INFO_CAP_TYPE, or None:
        asked the way QEMU asks, again with the argsz the first reply wanted."""
        payload = wire.build(wire.RegionInfo, argsz=wire.REGION_INFO_SIZE, flags=0,
                             index=index, cap_offset=0, size=0, offset=0)
        info = wire.parse(wire.RegionInfo, self._req(Command.DEVICE_GET_REGION_INFO,
                                                     payload).payload)
        if info.argsz <= wire.REGION_INFO_SIZE:
            return None
        payload = wire.build(wire.RegionInfo, argsz=info.argsz, flags=0, index=index,
                             cap_offset=0, size=0, offset=0)
        reply = bytes(self._req(Command.DEVICE_GET_REGION_INFO, payload).payload)
        offset = wire.parse(wire.RegionInfo, reply).cap_offset
        seen: set[int] = set()
        end = len(reply) - wire.REGION_INFO_CAP_TYPE_SIZE
        while offset and offset not in seen and offset <= end:
            seen.add(offset)
            cap = wire.parse(wire.RegionInfoCapType, reply[offset:])
            if cap.id == wire.REGION_INFO_CAP_TYPE:
                return cap.type, cap.subtype
            offset = cap.next
        return None

    def get_irq_info(self, index: int) -> wire.Container:
        payload = wire.build(wire.IrqInfo, argsz=wire.IRQ_INFO_SIZE, flags=0, index=index,
                             count=0)
        return wire.parse(wire.IrqInfo, self._req(Command.DEVICE_GET_IRQ_INFO, payload).payload)

    def set_irqs(
        self,
        index: int,
        flags: int,
        start: int = 0,
        count: int = 0,
        fds: Sequence[int] = (),
        data: bytes = b"",
    ) -> None:
        payload = wire.build(wire.SetIrqs, argsz=wire.SET_IRQS_SIZE + len(data), flags=flags,
                             index=index, start=start, count=count, data=data)
        self._req(Command.DEVICE_SET_IRQS, payload, fds)

    def set_irq_eventfds(self, index: int, start: int, fds: Sequence[int]) -> None:
        """Assign eventfds to vectors [start, start+len(fds))."""
        self.set_irqs(index, wire.SetIrqsFlags.DATA_EVENTFD | wire.SetIrqsFlags.TRIGGER,
                      start, len(fds), fds)

    def disable_irqs(self, index: int) -> None:
        self.set_irqs(index, wire.SetIrqsFlags.DATA_NONE | wire.SetIrqsFlags.TRIGGER, 0, 0)

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        payload = wire.REGION_ACCESS.pack(offset, index, count)
        reply = self.request(_REGION_READ, payload)
        assert reply is not None
        # RegionAccessData: the fixed part, then exactly `count` data bytes.
        body = reply.payload
        n = _ACCESS_DATA.unpack(body)[2]
        data = body[_ACCESS_DATA_SIZE : _ACCESS_DATA_SIZE + n]
        if len(data) != n:
            raise StreamError(f"REGION_READ reply has {len(data)} of {n} data bytes")
        return data

    def region_write(self, index: int, offset: int, data: bytes, *, posted: bool = False) -> None:
        """A write; `posted` sets NO_REPLY like QEMU's memory-BAR writes
        (docs/vfio-user-qemu.md §3.7)."""
        payload = wire.REGION_ACCESS_DATA.pack(offset, index, len(data)) + bytes(data)
        self.request(_REGION_WRITE, payload, no_reply=posted)

    def device_reset(self) -> None:
        self._req(Command.DEVICE_RESET)

    def write_multi(self, writes: Sequence[tuple[int, int, bytes]]) -> None:
        """REGION_WRITE_MULTI of (region, offset, data<=8 bytes); always NO_REPLY."""
        entries = [
            {"offset": off, "region": reg, "count": len(d), "data": d.ljust(8, b"\0")}
            for reg, off, d in writes
        ]
        payload = wire.build(wire.WriteMulti, wr_cnt=len(entries), entries=entries)
        self.request(Command.REGION_WRITE_MULTI, payload, no_reply=True)

    def _req(self, cmd: int, payload: bytes = b"", fds: Sequence[int] = ()) -> Message:
        reply = self.request(cmd, payload, fds)
        assert reply is not None
        return reply
