"""asyncio TCP server for the spdm-emu socket protocol (`vdev spdm-emu`).

Serves one connection at a time, as spdm_responder_emu does: a second client waits
until the first sends CONTINUE or goes away.  SHUTDOWN ends `serve_forever`.

Socket behaviour (docs/protocols.md §9.4): frames are assembled from partial reads (spdm-emu's
C side writes the header words and the payload in separate send() calls), every reply
frame goes out in a single write, and TCP_NODELAY is set on accepted sockets so no
reply waits out Nagle plus the peer's delayed ACK; TCP_QUICKACK is re-armed after each
read for peers that do not set TCP_NODELAY themselves (vdev.spdm_emu.tcp).  A reply
larger than QEMU's 0x1200-byte spdm-socket buffer is logged as an error (QEMU would
reject it); the device's DataTransferSize keeps the standard flow below it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from vdev.spdm_emu.connection import Action, SpdmDevice, SpdmEmuResponder
from vdev.spdm_emu.frame import QEMU_MAX_PAYLOAD, FrameDecoder, FrameError, TransportType
from vdev.spdm_emu.tcp import rearm_quickack, set_nodelay

log = logging.getLogger(__name__)

READ_SIZE = 0x10000


class SpdmEmuServer:
    def __init__(
        self,
        device: SpdmDevice,
        transport: TransportType = TransportType.PCI_DOE,
        host: str = "127.0.0.1",
        port: int = 2323,
    ) -> None:
        self.responder = SpdmEmuResponder(device, transport)
        self.host = host
        self.port = port
        self.connections = 0
        self.largest_reply = 0
        self._server: asyncio.Server | None = None
        self._one_at_a_time = asyncio.Lock()
        self._shutdown = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("spdm-emu %s server on %s:%d", self.responder.transport.name,
                 self.host, self.port)

    async def serve_forever(self, stop: asyncio.Event | None = None) -> None:
        """Until a client sends SHUTDOWN (or `stop` is set)."""
        if self._server is None:
            await self.start()
        waiters = [asyncio.ensure_future(self._shutdown.wait())]
        if stop is not None:
            waiters.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await self.close()

    @property
    def shut_down(self) -> bool:
        return self._shutdown.is_set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._one_at_a_time:
            if self._shutdown.is_set():
                writer.close()
                return
            self.connections += 1
            peer = writer.get_extra_info("peername")
            sock = writer.get_extra_info("socket")
            if sock is not None:
                set_nodelay(sock)
            log.info("spdm-emu connection from %s", peer)
            try:
                await self._serve(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                log.info("spdm-emu connection from %s lost: %s", peer, exc)
            except Exception:  # a device bug must not take the server down with it
                log.exception("spdm-emu: error serving %s; dropping the connection", peer)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            rearm_quickack(writer.get_extra_info("socket"))
            try:
                frames = decoder.feed(data)
            except FrameError as exc:
                log.warning("spdm-emu: %s; dropping the connection", exc)
                return
            for frame in frames:
                log.debug("spdm-emu <- %s", frame)
                outcome = self.responder.handle(frame)
                delay = self.responder.take_reply_delay()
                if delay:
                    await asyncio.sleep(delay)
                if outcome.reply is not None:
                    size = len(outcome.reply.payload)
                    self.largest_reply = max(self.largest_reply, size)
                    if size > QEMU_MAX_PAYLOAD:
                        log.error("spdm-emu reply of %d bytes exceeds QEMU's %#x-byte buffer",
                                  size, QEMU_MAX_PAYLOAD)
                    log.debug("spdm-emu -> %s", outcome.reply)
                    writer.write(outcome.reply.encode())
                    await writer.drain()
                if outcome.action is Action.KEEP:
                    continue
                if outcome.action is Action.SHUTDOWN:
                    log.info("spdm-emu: SHUTDOWN")
                    self._shutdown.set()
                elif outcome.action is Action.CONTINUE:
                    log.info("spdm-emu: CONTINUE, waiting for the next connection")
                return
