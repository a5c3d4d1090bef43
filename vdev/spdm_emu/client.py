"""Blocking spdm-emu socket client: a transport for our SPDM requester and TSM model.

    with SpdmEmuClient("127.0.0.1", 2323, transport="pci_doe") as c:
        c.hello()                                  # TEST "Client Hello!" / "Server Hello!"
        requester.run(op, c.spdm_transport)        # Outgoing -> reply bytes
        c.shutdown()                               # or c.continue_()

`doe_exchange(type, payload)` carries one SPDM (type 1) or secured SPDM (type 2)
message: wrapped in a DOE object for PCI_DOE, behind MCTP message type 0x05 / 0x06 for
MCTP, bare for NONE (plaintext only).  Frames are written in one sendall() with
TCP_NODELAY set, replies are assembled from partial reads, and TCP_QUICKACK is re-armed
after every read: a responder that writes a frame in several send() calls without
TCP_NODELAY (spdm-emu, QEMU) otherwise waits out our delayed ACK between its writes
(vdev.spdm_emu.tcp).
"""

from __future__ import annotations

import socket
from types import TracebackType

from spdm.requester import Outgoing
from vdev.doe import data_object as doe_object
from vdev.doe.data_object import (
    DISCOVERY,
    HEADER_DW,
    PCI_SIG_VENDOR_ID,
    DoeProtocolId,
)
from vdev.spdm_emu import mctp
from vdev.spdm_emu.frame import (
    CLIENT_HELLO,
    SERVER_HELLO,
    TRANSPORT_NAMES,
    Command,
    Frame,
    FrameDecoder,
    SpdmEmuError,
    TransportType,
)
from vdev.spdm_emu.mctp import MctpMessageType
from vdev.spdm_emu.tcp import rearm_quickack, set_nodelay


class SpdmEmuClient:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2323,
        transport: str | TransportType = "pci_doe",
        *,
        timeout: float = 10.0,
    ) -> None:
        if isinstance(transport, str):
            try:
                transport = TRANSPORT_NAMES[transport]
            except KeyError:
                raise ValueError(f"unknown transport {transport!r}") from None
        self.transport = TransportType(transport)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        set_nodelay(self.sock)
        rearm_quickack(self.sock)
        self._decoder = FrameDecoder()
        self._frames: list[Frame] = []

    # ---- frames ----------------------------------------------------------------

    def send(self, command: int, payload: bytes = b"") -> None:
        self.sock.sendall(Frame(command, int(self.transport), payload).encode())

    def recv(self) -> Frame:
        """The next frame; ConnectionError when the server closed the connection."""
        while not self._frames:
            data = self.sock.recv(0x10000)
            if not data:
                raise ConnectionError("spdm-emu server closed the connection")
            rearm_quickack(self.sock)
            self._frames += self._decoder.feed(data)
        return self._frames.pop(0)

    def request(self, command: int, payload: bytes = b"") -> Frame:
        self.send(command, payload)
        return self.recv()

    def _expect(self, frame: Frame, command: Command) -> Frame:
        if frame.command != command:
            raise SpdmEmuError(f"expected {command.name}, got {frame}")
        return frame

    # ---- commands --------------------------------------------------------------

    def hello(self) -> bytes:
        """TEST with "Client Hello!\\0"; the server must answer "Server Hello!\\0"."""
        reply = self._expect(self.request(Command.TEST, CLIENT_HELLO), Command.TEST)
        if reply.payload != SERVER_HELLO:
            raise SpdmEmuError(f"unexpected TEST reply {reply.payload!r}")
        return reply.payload

    def message(self, payload: bytes) -> bytes:
        """One NORMAL exchange: transport message in, transport message out."""
        return self._expect(self.request(Command.NORMAL, payload), Command.NORMAL).payload

    def doe_object(self, obj: bytes) -> bytes:
        if self.transport != TransportType.PCI_DOE:
            raise SpdmEmuError("DOE objects need the PCI_DOE transport")
        return self.message(obj)

    def doe_exchange(self, data_object_type: int, payload: bytes) -> bytes:
        """One SPDM (1) or secured SPDM (2) message; returns the reply message."""
        if self.transport == TransportType.PCI_DOE:
            reply = self.doe_object(
                doe_object.build_object(DoeProtocolId(PCI_SIG_VENDOR_ID, data_object_type),
                                        payload)
            )
            return _doe_payload(reply)
        if self.transport == TransportType.MCTP:
            mtype = MctpMessageType.SECURED_SPDM if data_object_type == 2 else MctpMessageType.SPDM
            _reply_type, body = mctp.decode(self.message(mctp.encode(mtype, payload)))
            return body
        if data_object_type != 1:
            raise SpdmEmuError("the NONE transport carries plaintext SPDM only")
        return self.message(payload)

    def spdm_transport(self, out: Outgoing) -> bytes:
        """`Requester.run` transport."""
        return self.doe_exchange(out.doe_type, out.data)

    def discover(self, version: int = 2) -> list[tuple[int, int]]:
        """DOE discovery over the socket (PCI_DOE): [(vendor, type), ...]."""
        found: list[tuple[int, int]] = []
        index = 0
        for _ in range(256):
            req = doe_object.build_object(DISCOVERY,
                                          doe_object.build_discovery_request(index, version))
            protocol, index = doe_object.parse_discovery_response(
                _doe_payload(self.doe_object(req))[:4]
            )
            found.append((protocol.vendor_id, protocol.data_object_type))
            if index == 0:
                return found
        raise SpdmEmuError("discovery did not terminate")

    def shutdown(self) -> None:
        """SHUTDOWN: the server echoes it and exits."""
        self._expect(self.request(Command.SHUTDOWN), Command.SHUTDOWN)
        self.close()

    def continue_(self) -> None:
        """CONTINUE: the server echoes it, closes, and accepts the next connection."""
        self._expect(self.request(Command.CONTINUE), Command.CONTINUE)
        self.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SpdmEmuClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _doe_payload(obj: bytes) -> bytes:
    if len(obj) < 4 * HEADER_DW:
        raise SpdmEmuError(f"DOE reply of {len(obj)} bytes has no header")
    header = doe_object.parse_header(obj[: 4 * HEADER_DW])
    if header.protocol.vendor_id != PCI_SIG_VENDOR_ID or header.length_dw * 4 != len(obj):
        raise SpdmEmuError(f"malformed DOE reply header {obj[:8].hex()}")
    return obj[4 * HEADER_DW :]
