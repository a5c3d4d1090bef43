"""spdm-emu socket frames (spdm-emu spdm_emu/spdm_emu_common/command.h, command.c).

Both directions use the same frame:

    command u32 | transport_type u32 | size u32 | payload[size]

The three header words are big-endian (spdm-emu sends them through htonl); the payload
is the transport message (PCI_DOE: a whole DOE object; MCTP: message type byte + body).
QEMU's backends/spdm-socket.c uses the same header; its receive buffer is
`SPDM_SOCKET_MAX_MESSAGE_BUFFER_SIZE` = 0x1200 bytes of payload.

`FrameDecoder` assembles frames from arbitrary partial reads: spdm-emu's C side writes
the three header words and the payload with separate send() calls.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from construct import Int32ub, Struct

FrameHeader = Struct(
    "command" / Int32ub,
    "transport_type" / Int32ub,
    "size" / Int32ub,
)
HEADER_SIZE = FrameHeader.sizeof()

QEMU_MAX_PAYLOAD = 0x1200  # QEMU SPDM_SOCKET_MAX_MESSAGE_BUFFER_SIZE
# Far above any SPDM message we produce (65536-byte max SPDM message plus transport
# overhead); a larger size field is a broken or hostile peer and ends the connection.
MAX_PAYLOAD = 0x20000

CLIENT_HELLO = b"Client Hello!\x00"
SERVER_HELLO = b"Server Hello!\x00"


class Command(enum.IntEnum):
    NORMAL = 0x0001
    OOB_ENCAP_KEY_UPDATE = 0x8001
    OOB_ENCAP_ENDPOINT_INFO = 0x8002
    CONTINUE = 0xFFFD
    SHUTDOWN = 0xFFFE  # spdm-rs: STOP
    UNKNOWN = 0xFFFF  # spdm-emu spells it SOCKET_SPDM_COMMAND_UNKOWN
    TEST = 0xDEAD


class TransportType(enum.IntEnum):
    NONE = 0
    MCTP = 1
    PCI_DOE = 2
    TCP = 3  # spdm-emu; QEMU uses 3 for SCSI


TRANSPORT_NAMES = {"none": TransportType.NONE, "mctp": TransportType.MCTP,
                   "pci_doe": TransportType.PCI_DOE}


class SpdmEmuError(Exception):
    """Root of the spdm_emu adapter's exceptions; raised as such by the client when the
    server answers something other than what the request calls for."""


class FrameError(SpdmEmuError):
    """The byte stream is not a sequence of valid frames."""


@dataclass(frozen=True)
class Frame:
    command: int
    transport_type: int
    payload: bytes = b""

    def encode(self) -> bytes:
        header = FrameHeader.build(
            {"command": self.command, "transport_type": self.transport_type,
             "size": len(self.payload)}
        )
        return bytes(header) + self.payload

    def __str__(self) -> str:
        try:
            name = Command(self.command).name
        except ValueError:
            name = f"{self.command:#x}"
        return f"{name} transport {self.transport_type} {len(self.payload)} bytes"


class FrameDecoder:
    """Feed bytes as they arrive; complete frames come out in order."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= HEADER_SIZE:
            header = FrameHeader.parse(bytes(self._buf[:HEADER_SIZE]))
            if header.size > self.max_payload:
                raise FrameError(f"frame payload of {header.size} bytes exceeds "
                                 f"{self.max_payload}")
            end = HEADER_SIZE + header.size
            if len(self._buf) < end:
                break
            frames.append(Frame(header.command, header.transport_type,
                                bytes(self._buf[HEADER_SIZE:end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)
