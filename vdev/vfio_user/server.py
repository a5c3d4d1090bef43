"""asyncio vfio-user server: one `VfioUserDevice` per UNIX socket path.

Design (what QEMU's client expects: docs/vfio-user-qemu.md):

* Non-blocking socket driven by `loop.add_reader`/`add_writer` on asyncio's
  loop or uvloop (`event_loop`).  The reader takes what the socket holds with
  one `recvmsg_into` and a 16-fd cmsg buffer (`transport.MessageReader`, which
  says how fds are attributed); every message goes out with its fds in one
  `sendmsg`, a reply without fds with one `send` straight from the handler
  when nothing is queued.  The reader callback returns to the loop as soon as
  nothing is buffered, so a request costs the loop's wait, one receive and
  one send (docs/vfio-user-qemu.md §2.3, §6.5).
* Hot path (REGION_READ/WRITE, what a guest's config accesses and DOE driver
  are made of): received, checked and answered in the reader callback itself,
  header and access decoded in one call of a `struct` codec derived from the
  construct declarations in `wire` (`wire.FixedCodec`); everything else is
  parsed and built by construct, through the general dispatch.
* Client requests are processed strictly in order, synchronously, on the
  event-loop thread; the device is only ever called from that thread (except
  that `IrqSink.trigger` and `DmaAccess` may also be used from other threads).
* One client at a time.  While a client is connected the listening socket is
  not polled, so a second `connect()` waits in the kernel backlog (queued)
  until the first client leaves; then it is accepted and served.
* Malformed but framed requests get an error reply (flags 0x21, positive
  errno, header only) unless NO_REPLY was set; a stream that cannot be
  re-synchronised (bad size field, EOF mid-message, truncated fds) drops the
  client with one log line.  After a drop every DMA map and IRQ fd of that
  client is released, `device.detach()` is called and the next client is
  accepted.
* DMA for maps without an fd goes out as DMA_READ/DMA_WRITE.  A synchronous
  `DmaAccess.read/write` on the loop thread runs a nested receive pump on the
  socket until the reply arrives, and meanwhile dispatches any client
  request that arrives, in order (the device may thus be re-entered from
  inside its own DMA call).  This avoids the deadlock where QEMU's vCPU holds
  the BQL waiting for our reply while its DMA handler needs the BQL
  (docs/vfio-user-qemu.md §10.5); the price is that other asyncio tasks
  stall for the duration (bounded by `dma_timeout`).  It cannot help when the
  DMA is issued inside the handler of the very (non-posted) request a QEMU
  vCPU is blocked on: QEMU only services our DMA_READ/WRITE once that reply
  arrives.  Devices should therefore rely on memfd-backed guest RAM (plain
  memory copies, no messages) or start fd-less DMA with `read_async` /
  `write_async` from a task after the handler returned.  From other threads the
  call is handed to the loop and blocks only that thread.  The non-blocking
  alternative is `GuestMemory.read_async/write_async`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import select
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass

from construct import ConstructError

from vdev.pci.device_api import FIRST_DEVICE_REGION, RegionInfo, VfioUserDevice

from . import event_loop, wire
from .dma import DmaTable, GuestMemory
from .errors import DmaError, DropClient, ProtocolError
from .irq import NUM_IRQ_INDICES, IrqTable
from .transport import Message, MessageReader, PeerClosed, sendmsg_all
from .wire import Command, HeaderFlags

log = logging.getLogger("vdev.vfio_user")

NUM_IRQS = NUM_IRQ_INDICES  # 5: INTx, MSI, MSI-X, ERR, REQ

#: Our VERSION capabilities.  Must stay shorter than QEMU's own VERSION JSON
#: because QEMU's reply buffer is its request size (docs/vfio-user-qemu.md §3.1).
SERVER_CAPABILITIES: dict[str, object] = {
    "capabilities": {
        "max_msg_fds": wire.MAX_MSG_FDS,
        "max_data_xfer_size": wire.MAX_DATA_XFER_SIZE,
        "write_multiple": True,
    }
}

#: Shorter than QEMU's 5 s x-msg-timeout (docs/vfio-user-qemu.md §10.4): when a DMA the
#: device starts inside a request handler times out, the error reply to that
#: request must still reach QEMU before QEMU gives up on it.
DEFAULT_DMA_TIMEOUT = 2.0
_MAX_DMA_NESTING = 8
_QEMU_MAX_XFER = 64 << 20  # max_data_xfer_size <= 64 MiB (docs/vfio-user-qemu.md §3.1)

_Handler = Callable[[Message], bytes]

# Hot-path constants as plain ints (IntFlag/IntEnum operators are Python calls).
_TYPE_MASK = wire.TYPE_MASK
_NO_REPLY = wire.NO_REPLY
_REQUEST = wire.REQUEST
_REPLY = wire.REPLY
#: Most fds each command may carry; others carry none.
_MAX_FDS: dict[int, int] = {Command.DMA_MAP: 1, Command.DEVICE_SET_IRQS: wire.RECV_FDS}
_MAX_XFER = wire.MAX_DATA_XFER_SIZE
# RegionAccess (= the fixed part of RegionAccessData) as the derived struct's
# own methods: lengths are checked and values come from a parsed request.
_unpack_access = wire.REGION_ACCESS.struct.unpack_from
_pack_access = wire.REGION_ACCESS.struct.pack
_pack_header = wire.HEADER.struct.pack
_HEADER_SIZE = wire.HEADER_SIZE
_REGION_READ = int(Command.REGION_READ)
_REGION_CMDS = frozenset((_REGION_READ, int(Command.REGION_WRITE)))
_ACCESS_SIZE = wire.REGION_ACCESS_SIZE
#: Header + access of a REGION_READ reply (data follows) or REGION_WRITE reply.
_pack_region_head = wire.REGION_MESSAGE.struct.pack
_REGION_HEAD = wire.REGION_MESSAGE.size


@dataclass
class _PendingDma:
    cmd: int
    count: int
    future: asyncio.Future[bytes] | None = None
    done: bool = False
    data: bytes = b""
    error: BaseException | None = None

    def finish(self, data: bytes = b"", error: BaseException | None = None) -> None:
        self.done, self.data, self.error = True, data, error
        if self.future is not None and not self.future.done():
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(data)


class Connection:
    """One connected client: framing, dispatch, IRQ and DMA state."""

    def __init__(
        self,
        device: VfioUserDevice,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_close: Callable[[Connection], None],
        dma_timeout: float = DEFAULT_DMA_TIMEOUT,
    ) -> None:
        self.device = device
        self.loop = loop
        self.dma_timeout = dma_timeout
        self.irq = IrqTable(device.irq_count)
        self.dma_table = DmaTable()
        self.memory = GuestMemory(self.dma_table, self)
        self.closed = False
        self._sock = sock
        self._fd = sock.fileno()
        self._on_close = on_close
        self._rx = MessageReader(sock)
        # Every message is logged at DEBUG when the logger was at DEBUG as the client
        # connected (asked once: the question costs a call per config access).
        self._log_messages = log.isEnabledFor(logging.DEBUG)
        self._txq: deque[tuple[memoryview, list[int]]] = deque()
        self._writer_armed = False
        self._loop_thread = threading.get_ident()
        self._negotiated = False
        self._client_max_xfer = wire.MAX_DATA_XFER_SIZE
        self._next_id = 0
        self._pending: dict[int, _PendingDma] = {}
        self._abandoned: set[int] = set()
        self._nesting = 0
        self._regions: dict[int, RegionInfo] = {r.index: r for r in device.regions()}
        self._num_regions = _count_regions(self._regions)
        # Per region index, the size a read / write may reach (-1: no access at
        # all), so the hot path can accept a valid access with one comparison;
        # anything else goes through _check_region for the exact refusal.
        self._read_limit = [-1] * self._num_regions
        self._write_limit = [-1] * self._num_regions
        for index, info in self._regions.items():
            if info.size:
                if info.readable:
                    self._read_limit[index] = info.size
                if info.writable:
                    self._write_limit[index] = info.size
        self._handlers: dict[int, _Handler] = {
            Command.VERSION: self._version,
            Command.DMA_MAP: self._dma_map,
            Command.DMA_UNMAP: self._dma_unmap,
            Command.DEVICE_GET_INFO: self._device_get_info,
            Command.DEVICE_GET_REGION_INFO: self._get_region_info,
            Command.DEVICE_GET_IRQ_INFO: self._get_irq_info,
            Command.DEVICE_SET_IRQS: self._set_irqs,
            Command.REGION_READ: self._region_read,
            Command.REGION_WRITE: self._region_write,
            Command.DEVICE_RESET: self._device_reset,
            Command.REGION_WRITE_MULTI: self._write_multi,
        }
        device.attach(self.irq, self.memory)
        loop.add_reader(self._fd, self._on_readable)

    # --- lifecycle ------------------------------------------------------------

    def close(self, reason: str, level: int = logging.WARNING) -> None:
        """Drop the client: one log line, release everything, detach the device."""
        if self.closed:
            return
        self.closed = True
        log.log(level, "client dropped: %s", reason)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self._fd)
        if self._writer_armed:
            with contextlib.suppress(Exception):
                self.loop.remove_writer(self._fd)
        self._sock.close()
        self._rx.close_fds()
        for p in self._pending.values():
            p.finish(error=DmaError(errno.ECONNRESET, "client went away"))
        self._pending.clear()
        try:
            self.device.detach()
        except Exception:
            log.exception("device.detach() failed")
        self.irq.release()
        self.dma_table.release()
        self._on_close(self)

    # --- receive path -----------------------------------------------------------

    def _on_readable(self) -> None:
        rx = self._rx
        try:
            if not rx.buffered and self._negotiated and not self._log_messages:
                # The usual wake-up: one config access, received and answered here.
                access = rx.receive_access()
                if access is not None:
                    self._region_access(*access)
                if not rx.buffered:
                    return
            while not self.closed:
                msg = rx.poll()
                if msg is None:
                    return
                if (msg.cmd in _REGION_CMDS and not msg.fds and len(msg.payload) >= _ACCESS_SIZE
                        and self._negotiated and not self._log_messages):
                    self._region_access(msg[:5] + _unpack_access(msg.payload),
                                        msg.payload[_ACCESS_SIZE:])
                else:
                    self._dispatch(msg)
                if not rx.buffered:
                    # Nothing buffered: go back to the event loop instead of
                    # paying for a receive that would most likely fail with
                    # EAGAIN (after a reply the client is waiting for it, not
                    # sending more).  The reader is level-triggered: bytes
                    # already queued in the socket call us again, in order.
                    return
        except PeerClosed as exc:
            self.close(str(exc), logging.INFO)
        except DropClient as exc:
            self.close(str(exc))

    def _dispatch(self, msg: Message) -> None:
        try:
            if msg.flags & _TYPE_MASK == _REPLY:
                self._on_reply(msg)
            else:
                self._on_request(msg)
        finally:
            if msg.fds:
                for fd in msg.fds:  # fds no handler took ownership of
                    with contextlib.suppress(OSError):
                        os.close(fd)
                msg.fds.clear()

    def _on_request(self, msg: Message) -> None:
        no_reply = msg.flags & _NO_REPLY
        if self._log_messages:
            log.debug("<- %s id %d flags %#x size %d fds %d %s", wire.command_name(msg.cmd),
                      msg.id, msg.flags, msg.size, len(msg.fds), msg.payload[:32].hex())
        try:
            if msg.flags & _TYPE_MASK != _REQUEST:
                raise ProtocolError(errno.EINVAL, f"bad message type {msg.flags & 0xF}")
            handler = self._handlers.get(msg.cmd)
            if handler is None:
                raise ProtocolError(errno.ENOTSUP, "command not supported")
            if not self._negotiated and msg.cmd != Command.VERSION:
                raise ProtocolError(errno.EINVAL, "VERSION must be the first message")
            if msg.fds:
                max_fds = _MAX_FDS.get(msg.cmd, 0)
                if len(msg.fds) > max_fds:
                    raise ProtocolError(errno.EINVAL, f"{len(msg.fds)} fds, at most {max_fds}")
            payload = handler(msg)
        except Exception as exc:
            self._refuse(msg, exc)
            return
        # Posted writes and WRITE_MULTI never get a reply (docs/vfio-user-qemu.md §10.1).
        if not no_reply:
            # wire.build_message, inlined (msg.id and msg.cmd are parsed u16s).
            self._send(_pack_header(msg.id, msg.cmd, _HEADER_SIZE + len(payload), _REPLY, 0)
                       + payload)

    def _refuse(self, msg: Message, exc: Exception) -> None:
        """A request that failed: one log line, and the error reply unless NO_REPLY."""
        name = wire.command_name(msg.cmd)
        if isinstance(exc, ProtocolError):
            log.warning("%s id %d refused: %s (errno %d)", name, msg.id, exc, exc.errno)
            code = exc.errno
        elif isinstance(exc, (ConstructError, ValueError, UnicodeDecodeError)):
            log.warning("%s id %d malformed: %s", name, msg.id, exc)
            code = errno.EINVAL
        elif isinstance(exc, DmaError):
            log.warning("%s id %d: device DMA failed: %s", name, msg.id, exc)
            code = exc.errno or errno.EIO
        else:
            # A device bug must not take the server down; the guest sees an error.
            log.error("%s id %d failed in the device", name, msg.id, exc_info=exc)
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
        if not msg.flags & _NO_REPLY:
            self._send(wire.build_error_reply(msg.id, msg.cmd, code))

    def _region_access(self, fields: tuple[int, ...], data: bytes) -> None:
        """A REGION_READ or (posted) REGION_WRITE without fds after VERSION, as header
        and access fields (wire.REGION_MESSAGE) and the written data: the checks of
        `_region_read`/`_region_write` inline, the device call and the reply, with
        none of the general path's layers (config accesses are what a guest's DOE
        driver is made of).  Anything that fails a check before the device is called
        goes the general way, which gives the exact refusal."""
        msg_id, cmd, size, flags, _, offset, region, count = fields
        if region < self._num_regions and count <= _MAX_XFER:
            if cmd == _REGION_READ:
                if (size == _REGION_HEAD and not flags
                        and offset + count <= self._read_limit[region]):
                    try:
                        data = self.device.region_read(region, offset, count)
                        if len(data) != count:
                            raise ProtocolError(errno.EIO, f"device returned {len(data)} "
                                                f"of {count} bytes")
                    except Exception as exc:
                        self._refuse(_as_message(fields, b""), exc)
                        return
                    reply = _pack_region_head(msg_id, cmd, _REGION_HEAD + count, _REPLY, 0,
                                              offset, region, count) + data
                    # _send_reply() for the usual case, inline: the whole reply in one send.
                    try:
                        sent = 0 if self._txq else self._sock.send(reply)
                    except OSError:
                        sent = 0  # _send_reply() tries again and deals with it
                    if sent != len(reply):
                        self._send_reply(reply[sent:])
                    return
            elif (size == _REGION_HEAD + count and not flags & ~_NO_REPLY
                  and offset + count <= self._write_limit[region]):
                try:
                    self.device.region_write(region, offset, data)
                except Exception as exc:
                    self._refuse(_as_message(fields, data), exc)
                    return
                if not flags:
                    self._send_reply(_pack_region_head(msg_id, cmd, _REGION_HEAD, _REPLY, 0,
                                                       offset, region, count))
                return
        self._dispatch(_as_message(fields, data))

    def _on_reply(self, msg: Message) -> None:
        pending = self._pending.pop(msg.id, None)
        if pending is None:
            if msg.id in self._abandoned:
                self._abandoned.discard(msg.id)
                log.warning("late reply id %d to a timed-out DMA request ignored", msg.id)
                return
            log.warning("reply id %d (%s) matches no request", msg.id,
                        wire.command_name(msg.cmd))
            if not msg.flags & HeaderFlags.NO_REPLY:
                self._send(wire.build_error_reply(msg.id, msg.cmd, errno.EINVAL))
            return
        if msg.fds:
            pending.finish(error=DmaError(errno.EINVAL, "fds on a DMA reply"))
        elif msg.cmd != pending.cmd:
            pending.finish(error=DmaError(errno.EPROTO, f"reply cmd {msg.cmd} to {pending.cmd}"))
        elif msg.flags & HeaderFlags.ERROR:
            pending.finish(error=DmaError(msg.error or errno.EIO, "client refused DMA"))
        elif pending.cmd == Command.DMA_READ:
            try:
                body = wire.parse(wire.DmaData, msg.payload)
            except ConstructError as exc:
                pending.finish(error=DmaError(errno.EPROTO, f"bad DMA_READ reply: {exc}"))
                return
            if body.count != pending.count or len(body.data) != pending.count:
                pending.finish(error=DmaError(errno.EPROTO, "DMA_READ reply count mismatch"))
            else:
                pending.finish(data=bytes(body.data))
        else:
            pending.finish()

    # --- send path ----------------------------------------------------------------

    def _send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        if self.closed:
            return
        if not self._txq and not fds:
            self._send_reply(data)
            return
        self._txq.append((memoryview(data), list(fds)))
        if len(self._txq) == 1:
            self._flush()

    def _send_reply(self, data: bytes) -> None:
        """A message without fds: sent right away when nothing is queued (one syscall),
        the rest queued behind whatever is."""
        if self._txq or self.closed:
            if not self.closed:
                self._txq.append((memoryview(data), []))
            return
        try:
            n = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self.close(f"send failed: {exc}")
            return
        if n != len(data):
            self._txq.append((memoryview(data)[n:], []))
            self._flush()

    def _flush(self) -> None:
        try:
            while self._txq:
                buf, fds = self._txq[0]
                n = sendmsg_all(self._sock, bytes(buf), fds)
                if n < len(buf):
                    # Partial send: the fds went with the first byte.
                    self._txq[0] = (buf[n:], [])
                    break
                self._txq.popleft()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self.close(f"send failed: {exc}")
            return
        want_writer = bool(self._txq)
        if want_writer != self._writer_armed:
            if want_writer:
                self.loop.add_writer(self._fd, self._flush)
            else:
                self.loop.remove_writer(self._fd)
            self._writer_armed = want_writer

    # --- RemoteDma: DMA_READ / DMA_WRITE to the client ---------------------------------

    def _chunks(self, addr: int, length: int) -> list[tuple[int, int, int]]:
        """(address, offset in buffer, length) pieces within the client's xfer size."""
        step = self._client_max_xfer
        return [(addr + o, o, min(step, length - o)) for o in range(0, length, step)]

    def _start_dma(
        self, cmd: Command, addr: int, data: bytes, count: int
    ) -> tuple[int, _PendingDma]:
        if self.closed:
            raise DmaError(errno.ECONNRESET, "no client")
        msg_id = self._next_id
        self._next_id = (msg_id + 1) & 0xFFFF
        if cmd == Command.DMA_READ:
            payload = wire.build(wire.DmaReadRequest, offset=addr, count=count)
        else:
            payload = wire.build(wire.DmaData, offset=addr, count=count, data=data)
        pending = _PendingDma(cmd, count)
        self._pending[msg_id] = pending
        self._send(wire.build_message(msg_id, cmd, payload))
        return msg_id, pending

    def _from_thread(self, coro: Coroutine[object, object, bytes | None]) -> bytes | None:
        """A DMA from a device thread: run it on the loop, block only this thread."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(self.dma_timeout * 2)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise DmaError(errno.ETIMEDOUT, "DMA reply timed out") from None

    def read(self, addr: int, length: int) -> bytes:
        if threading.get_ident() != self._loop_thread:
            return self._from_thread(self.read_async(addr, length)) or b""
        out = bytearray(length)
        for a, o, n in self._chunks(addr, length):
            out[o : o + n] = self._wait_sync(*self._start_dma(Command.DMA_READ, a, b"", n))
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        if threading.get_ident() != self._loop_thread:
            self._from_thread(self.write_async(addr, data))
            return
        for a, o, n in self._chunks(addr, len(data)):
            self._wait_sync(*self._start_dma(Command.DMA_WRITE, a, data[o : o + n], n))

    async def read_async(self, addr: int, length: int) -> bytes:
        out = bytearray(length)
        for a, o, n in self._chunks(addr, length):
            out[o : o + n] = await self._wait_async(*self._start_dma(Command.DMA_READ, a, b"", n))
        return bytes(out)

    async def write_async(self, addr: int, data: bytes) -> None:
        for a, o, n in self._chunks(addr, len(data)):
            await self._wait_async(*self._start_dma(Command.DMA_WRITE, a, data[o : o + n], n))

    async def _wait_async(self, msg_id: int, pending: _PendingDma) -> bytes:
        if pending.done:
            return self._result(pending)
        pending.future = self.loop.create_future()
        try:
            return await asyncio.wait_for(pending.future, self.dma_timeout)
        except TimeoutError:
            self._abandon(msg_id)
            raise DmaError(errno.ETIMEDOUT, "DMA reply timed out") from None

    def _wait_sync(self, msg_id: int, pending: _PendingDma) -> bytes:
        """Nested receive pump on the loop thread (see module docstring)."""
        if self._nesting >= _MAX_DMA_NESTING:
            self._abandon(msg_id)
            raise DmaError(errno.EDEADLK, "DMA nested too deeply")
        self._nesting += 1
        deadline = time.monotonic() + self.dma_timeout
        try:
            poller = select.poll()
            while not pending.done:
                if self.closed:
                    raise DmaError(errno.ECONNRESET, "client went away")
                msg = self._rx.poll()
                if msg is not None:
                    self._dispatch(msg)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._abandon(msg_id)
                    raise DmaError(errno.ETIMEDOUT, "DMA reply timed out")
                events = select.POLLIN | (select.POLLOUT if self._txq else 0)
                poller.register(self._fd, events)
                ready = poller.poll(remaining * 1000)
                for _, ev in ready:
                    if ev & select.POLLOUT:
                        self._flush()
        except PeerClosed as exc:
            self.close(str(exc), logging.INFO)
            raise DmaError(errno.ECONNRESET, "client went away") from None
        except DropClient as exc:
            self.close(str(exc))
            raise DmaError(errno.ECONNRESET, "client dropped") from None
        finally:
            self._nesting -= 1
            if not self.closed and self._rx.has_message():
                # The pump left whole messages in the reader's buffer; outside a
                # reader callback nothing else would take them before the socket
                # becomes readable again.
                self.loop.call_soon(self._on_readable)
        return self._result(pending)

    def _abandon(self, msg_id: int) -> None:
        if self._pending.pop(msg_id, None) is not None:
            self._abandoned.add(msg_id)

    @staticmethod
    def _result(pending: _PendingDma) -> bytes:
        if pending.error is not None:
            raise pending.error
        return pending.data

    # --- command handlers (return the reply payload) ------------------------------------

    def _version(self, msg: Message) -> bytes:
        if self._negotiated:
            raise ProtocolError(errno.EINVAL, "VERSION sent twice")
        req = wire.parse(wire.Version, msg.payload)
        if req.major != 0:
            raise ProtocolError(errno.ENOTSUP, f"protocol major {req.major} not supported")
        caps = json.loads(req.json) if req.json.strip() else {}
        if not isinstance(caps, dict):
            raise ProtocolError(errno.EINVAL, "VERSION JSON is not an object")
        client_caps = caps.get("capabilities", {})
        if isinstance(client_caps, dict):
            xfer = client_caps.get("max_data_xfer_size")
            if isinstance(xfer, int) and xfer >= 4096:
                self._client_max_xfer = min(xfer, _QEMU_MAX_XFER)
        self._negotiated = True
        # Reply 0.0 (QEMU fails on minor > 0) with a JSON object (docs/vfio-user-qemu.md §3.1).
        text = json.dumps(SERVER_CAPABILITIES, separators=(",", ":"))
        log.info("client negotiated: %s", req.json)
        return wire.build(wire.Version, major=0, minor=0, json=text)

    def _dma_map(self, msg: Message) -> bytes:
        req = _fixed(wire.DmaMap, msg.payload, wire.DMA_MAP_SIZE)
        if req.argsz < wire.DMA_MAP_SIZE:
            raise ProtocolError(errno.EINVAL, f"DMA_MAP argsz {req.argsz}")
        fd = msg.fds.pop() if msg.fds else None
        self.dma_table.map(req.iova, req.size, req.offset, req.flags, fd)
        return b""

    def _dma_unmap(self, msg: Message) -> bytes:
        req = _fixed(wire.DmaUnmap, msg.payload, wire.DMA_UNMAP_SIZE)
        if req.argsz < wire.DMA_UNMAP_SIZE:
            raise ProtocolError(errno.EINVAL, f"DMA_UNMAP argsz {req.argsz}")
        self.dma_table.unmap(req.iova, req.size, req.flags)
        # Echo the struct: fits QEMU's rsize of 40 (docs/vfio-user-qemu.md §3.2).
        return wire.build(wire.DmaUnmap, argsz=wire.DMA_UNMAP_SIZE, flags=req.flags,
                          iova=req.iova, size=req.size)

    def _device_get_info(self, msg: Message) -> bytes:
        req = _fixed(wire.DeviceInfo, msg.payload, wire.DEVICE_INFO_SIZE)
        if req.argsz < wire.DEVICE_INFO_SIZE:
            raise ProtocolError(errno.EINVAL, f"DEVICE_GET_INFO argsz {req.argsz}")
        # PCI is required by QEMU; RESET makes it send DEVICE_RESET (docs/vfio-user-qemu.md §3.3).
        return wire.build(
            wire.DeviceInfo,
            argsz=wire.DEVICE_INFO_SIZE,
            flags=wire.DeviceInfoFlags.PCI | wire.DeviceInfoFlags.RESET,
            num_regions=self._num_regions,
            num_irqs=NUM_IRQS,
        )

    def _get_region_info(self, msg: Message) -> bytes:
        req = _fixed(wire.RegionInfo, msg.payload, wire.REGION_INFO_SIZE)
        if req.argsz < wire.REGION_INFO_SIZE:
            raise ProtocolError(errno.EINVAL, f"GET_REGION_INFO argsz {req.argsz}")
        if not 0 <= req.index < self._num_regions:
            raise ProtocolError(errno.EINVAL, f"region index {req.index} out of range")
        info = self._regions.get(req.index)
        size = info.size if info is not None else 0
        flags = 0
        if info is not None and size:
            flags |= wire.RegionInfoFlags.READ if info.readable else 0
            flags |= wire.RegionInfoFlags.WRITE if info.writable else 0
        # No MMAP flag: we hand out no mmap fds, so QEMU uses posted writes for
        # memory BARs.  A standard region's reply is the bare 32-byte struct.
        if info is None or info.type is None:
            return wire.build(wire.RegionInfo, argsz=wire.REGION_INFO_SIZE, flags=flags,
                              index=req.index, cap_offset=0, size=size, offset=0)
        # A device-specific region's type follows the struct as a capability.  A
        # client whose argsz has no room for it gets the argsz it needs, and neither
        # the CAPS flag nor a cap_offset (QEMU refuses CAPS with cap_offset 0, which
        # the kernel would send), and asks again (docs/vfio-user-qemu.md §3.4).
        need = wire.REGION_INFO_SIZE + wire.REGION_INFO_CAP_TYPE_SIZE
        if req.argsz < need:
            return wire.build(wire.RegionInfo, argsz=need, flags=flags, index=req.index,
                              cap_offset=0, size=size, offset=0)
        flags |= wire.RegionInfoFlags.CAPS
        reply = wire.build(wire.RegionInfo, argsz=need, flags=flags, index=req.index,
                           cap_offset=wire.REGION_INFO_SIZE, size=size, offset=0)
        return reply + wire.build(wire.RegionInfoCapType, id=wire.REGION_INFO_CAP_TYPE,
                                  version=wire.REGION_INFO_CAP_TYPE_VERSION, next=0,
                                  type=info.type.type, subtype=info.type.subtype)

    def _get_irq_info(self, msg: Message) -> bytes:
        req = _fixed(wire.IrqInfo, msg.payload, wire.IRQ_INFO_SIZE)
        if req.argsz < wire.IRQ_INFO_SIZE:
            raise ProtocolError(errno.EINVAL, f"GET_IRQ_INFO argsz {req.argsz}")
        if not 0 <= req.index < NUM_IRQS:
            raise ProtocolError(errno.EINVAL, f"irq index {req.index} out of range")
        count = self.device.irq_count(req.index)
        flags = wire.IrqInfoFlags.EVENTFD
        if req.index == 0:
            # INTx is level-triggered with automask, like the kernel (docs/vfio-user-qemu.md §7).
            flags |= wire.IrqInfoFlags.MASKABLE | wire.IrqInfoFlags.AUTOMASKED
        # MSI/MSI-X: no NORESIZE, so QEMU updates single vectors with
        # SET_IRQS(start=v, count=1) instead of disabling and re-enabling the
        # whole index on every vector change (docs/vfio-user-qemu.md §7), which would
        # drop interrupts raised in between.
        return wire.build(wire.IrqInfo, argsz=wire.IRQ_INFO_SIZE, flags=flags,
                          index=req.index, count=count)

    def _set_irqs(self, msg: Message) -> bytes:
        if len(msg.payload) < wire.SET_IRQS_SIZE:
            raise ProtocolError(errno.EINVAL, "SET_IRQS payload too short")
        req = wire.parse(wire.SetIrqs, msg.payload)  # DATA_BOOL bytes follow the struct
        if req.argsz < wire.SET_IRQS_SIZE:
            raise ProtocolError(errno.EINVAL, f"SET_IRQS argsz {req.argsz}")
        self.irq.set_irqs(req.flags, req.index, req.start, req.count, list(msg.fds),
                          bytes(req.data))
        msg.fds.clear()  # ownership went to the IRQ table
        return b""

    def _check_region(self, index: int, offset: int, count: int, write: bool) -> None:
        if not 0 <= index < self._num_regions:
            raise ProtocolError(errno.EINVAL, f"region index {index} out of range")
        info = self._regions.get(index)
        if info is None or info.size == 0:
            raise ProtocolError(errno.EINVAL, f"region {index} does not exist")
        if not (info.writable if write else info.readable):
            raise ProtocolError(errno.EINVAL, f"region {index} is not "
                                f"{'writable' if write else 'readable'}")
        if count > wire.MAX_DATA_XFER_SIZE:
            raise ProtocolError(errno.EINVAL, f"access of {count} bytes too large")
        if offset + count > info.size:
            raise ProtocolError(
                errno.EINVAL,
                f"access {offset:#x}+{count} beyond region {index} size {info.size:#x}",
            )

    def _region_read(self, msg: Message) -> bytes:
        payload = msg.payload
        if len(payload) < wire.REGION_ACCESS_SIZE:
            raise ProtocolError(errno.EINVAL, f"payload {len(payload)} bytes, "
                                f"need {wire.REGION_ACCESS_SIZE}")
        offset, region, count = _unpack_access(payload)
        if not (region < self._num_regions and count <= _MAX_XFER
                and offset + count <= self._read_limit[region]):
            self._check_region(region, offset, count, write=False)
        data = bytes(self.device.region_read(region, offset, count))
        if len(data) != count:
            # QEMU requires the reply count to equal the request (docs/vfio-user-qemu.md §3.6).
            raise ProtocolError(errno.EIO, f"device returned {len(data)} of {count} bytes")
        return _pack_access(offset, region, count) + data

    def _region_write(self, msg: Message) -> bytes:
        payload = msg.payload
        if len(payload) < wire.REGION_ACCESS_SIZE:
            raise ProtocolError(errno.EINVAL, "REGION_WRITE payload too short")
        offset, region, count = _unpack_access(payload)
        if len(payload) - wire.REGION_ACCESS_SIZE != count:
            raise ProtocolError(
                errno.EINVAL,
                f"REGION_WRITE count {count} but {len(payload) - 16} data bytes",
            )
        if not (region < self._num_regions and count <= _MAX_XFER
                and offset + count <= self._write_limit[region]):
            self._check_region(region, offset, count, write=True)
        self.device.region_write(region, offset, payload[wire.REGION_ACCESS_SIZE :])
        return _pack_access(offset, region, count)

    def _device_reset(self, msg: Message) -> bytes:
        # DMA maps and IRQ fds survive a device reset: QEMU does not re-send
        # them (docs/vfio-user-qemu.md §3.8).
        self.device.reset()
        return b""

    def _write_multi(self, msg: Message) -> bytes:
        if len(msg.payload) < 8:
            raise ProtocolError(errno.EINVAL, "WRITE_MULTI payload too short")
        cnt = int.from_bytes(msg.payload[:8], "little")
        if len(msg.payload) != 8 + cnt * wire.WRITE_MULTI_ENTRY_SIZE:
            raise ProtocolError(errno.EINVAL, f"WRITE_MULTI wr_cnt {cnt} disagrees with size")
        req = wire.parse(wire.WriteMulti, msg.payload)
        for e in req.entries:
            if e.count > wire.WRITE_MULTI_MAX_DATA:
                raise ProtocolError(errno.EINVAL, f"WRITE_MULTI entry count {e.count}")
            self._check_region(e.region, e.offset, e.count, write=True)
        for e in req.entries:
            self.device.region_write(e.region, e.offset, bytes(e.data[: e.count]))
        return b""


def _count_regions(regions: dict[int, RegionInfo]) -> int:
    """DEVICE_GET_INFO's num_regions: the standard nine, then the device-specific
    ones, which must follow at consecutive indices and say what they are."""
    extra = sorted(index for index in regions if index >= FIRST_DEVICE_REGION)
    if extra != list(range(FIRST_DEVICE_REGION, FIRST_DEVICE_REGION + len(extra))):
        raise ValueError(f"device-specific regions {extra} do not follow region "
                         f"{FIRST_DEVICE_REGION - 1} without a gap")
    for index in extra:
        if regions[index].type is None:
            raise ValueError(f"device-specific region {index} has no type")
    if any(index < 0 for index in regions):
        raise ValueError("negative region index")
    return FIRST_DEVICE_REGION + len(extra)


def _as_message(fields: tuple[int, ...], data: bytes) -> Message:
    """The Message whose header and access fields (wire.REGION_MESSAGE) and data these
    are (the payload is the access struct, re-packed, and the data)."""
    msg_id, cmd, size, flags, error, offset, region, count = fields
    return Message(msg_id, cmd, size, flags, error, _pack_access(offset, region, count) + data, [])


def _fixed(struct: object, payload: bytes, size: int) -> wire.Container:
    """Parse a fixed-size request struct; trailing bytes are tolerated (argsz growth)."""
    if len(payload) < size:
        raise ProtocolError(errno.EINVAL, f"payload {len(payload)} bytes, need {size}")
    return wire.parse(struct, payload[:size])


class VfioUserServer:
    """Serves one device on one UNIX socket path, one client at a time."""

    def __init__(
        self,
        device: VfioUserDevice,
        socket_path: str,
        *,
        dma_timeout: float = DEFAULT_DMA_TIMEOUT,
    ) -> None:
        # A device whose regions cannot be described is refused here, not per client.
        _count_regions({r.index: r for r in device.regions()})
        self.device = device
        self.socket_path = socket_path
        self.dma_timeout = dma_timeout
        self.connection: Connection | None = None
        self.clients_served = 0
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client_gone: asyncio.Event | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client_gone = asyncio.Event()
        _remove_stale_socket(self.socket_path)
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            lst.bind(self.socket_path)
            lst.listen(8)
            lst.setblocking(False)
        except OSError:
            lst.close()
            raise
        self._listener = lst
        self._loop.add_reader(lst.fileno(), self._on_accept)
        log.info("listening on %s", self.socket_path)

    async def close(self) -> None:
        if self.connection is not None:
            self.connection.close("server shutting down", logging.INFO)
        if self._listener is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    async def wait_client_gone(self) -> None:
        """For tests: wait until the current client has been dropped."""
        assert self._client_gone is not None
        await self._client_gone.wait()

    def _on_accept(self) -> None:
        assert self._listener is not None and self._loop is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        sock.setblocking(False)
        # Queue further clients in the listen backlog until this one leaves.
        self._loop.remove_reader(self._listener.fileno())
        assert self._client_gone is not None
        self._client_gone.clear()
        self.clients_served += 1
        log.info("client connected on %s", self.socket_path)
        try:
            self.connection = Connection(self.device, sock, self._loop, self._on_close,
                                         self.dma_timeout)
        except Exception:
            log.exception("device.attach() failed; client dropped")
            sock.close()
            self._resume_accepting()

    def _on_close(self, conn: Connection) -> None:
        if self.connection is conn:
            self.connection = None
        self._resume_accepting()

    def _resume_accepting(self) -> None:
        assert self._client_gone is not None
        self._client_gone.set()
        if self._listener is not None and self._loop is not None:
            self._loop.add_reader(self._listener.fileno(), self._on_accept)


def _remove_stale_socket(path: str) -> None:
    """Unlink a leftover socket file; refuse if a live server still listens on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listening: stale
        return
    finally:
        probe.close()
    raise FileExistsError(f"{path}: another server is listening")


async def serve(
    device: VfioUserDevice,
    socket_path: str,
    *,
    stop: asyncio.Event | None = None,
    dma_timeout: float = DEFAULT_DMA_TIMEOUT,
) -> None:
    """Serve `device` on `socket_path` until `stop` is set (forever if None)."""
    server = VfioUserServer(device, socket_path, dma_timeout=dma_timeout)
    await server.start()
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        await server.close()


def run_server(device: VfioUserDevice, socket_path: str) -> None:
    """Blocking entry point: serve until Ctrl-C / SIGINT."""
    with contextlib.suppress(KeyboardInterrupt):
        event_loop.run(serve(device, socket_path))
