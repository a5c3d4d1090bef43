"""A host-side DOE requester over config-space accessors.

It issues the same register sequence as Linux drivers/pci/doe.c (abort,
header and payload DWs to the write mailbox, GO, poll STATUS for DOR, read
and acknowledge each DW), so tests, benchmarks and tools can talk to a DOE
mailbox through any path: the device model directly, or config-space
REGION_READ/REGION_WRITE over a vfio-user socket.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from vdev.doe.data_object import DoeError
from vdev.doe.mailbox import (
    CTRL_ABORT,
    CTRL_GO,
    DOE_CTRL,
    DOE_READ,
    DOE_STATUS,
    DOE_WRITE,
    STATUS_BUSY,
    STATUS_DATA_OBJECT_READY,
    STATUS_ERROR,
)

PCI_VENDOR_ID_PCI_SIG = 0x0001
DOE_TYPE_DISCOVERY = 0x00
DOE_MAX_DW = 1 << 18  # PCIe 6.2 §6.30.1: Length 0 encodes 2^18 DW

Read32 = Callable[[int], int]
Write32 = Callable[[int, int], None]


class DoeIoError(DoeError):
    """The mailbox reported ERROR, stayed BUSY, or answered malformed."""


@dataclass
class DoeResponse:
    header1: int
    header2: int
    payload: list[int]

    @property
    def data(self) -> bytes:
        return struct.pack(f"<{len(self.payload)}I", *self.payload)


class DoeRequester:
    """Drive one DOE capability at config offset `cap` through `read32`/`write32`."""

    def __init__(self, read32: Read32, write32: Write32, cap: int, *, max_polls: int = 1000):
        self.read32 = read32
        self.write32 = write32
        self.cap = cap
        self.max_polls = max_polls
        self.ctrl_bits = 0  # e.g. CTRL_INT_EN; Linux polls and never sets it

    def rd(self, reg: int) -> int:
        return self.read32(self.cap + reg)

    def wr(self, reg: int, value: int) -> None:
        self.write32(self.cap + reg, value)

    def abort(self) -> None:
        """pci_doe_abort: write ABORT, then require ERROR=0 and BUSY=0."""
        self.wr(DOE_CTRL, CTRL_ABORT)
        status = self.rd(DOE_STATUS)
        if status & (STATUS_ERROR | STATUS_BUSY):
            raise DoeIoError(f"abort failed, status {status:#x}")

    def send(self, vid: int, typ: int, payload: list[int]) -> None:
        """pci_doe_send_req."""
        status = self.rd(DOE_STATUS)
        if status & STATUS_BUSY:
            raise DoeIoError("mailbox busy")
        if status & STATUS_ERROR:
            raise DoeIoError("mailbox in error before send")
        self.wr(DOE_WRITE, vid | (typ << 16))
        self.wr(DOE_WRITE, (2 + len(payload)) & 0x3FFFF)
        for dw in payload:
            self.wr(DOE_WRITE, dw)
        self.wr(DOE_CTRL, CTRL_GO | self.ctrl_bits)

    def wait_ready(self) -> int:
        """Poll STATUS until DOR; returns how many polls it took (1 = first)."""
        for polls in range(1, self.max_polls + 1):
            status = self.rd(DOE_STATUS)
            if status & STATUS_ERROR:
                self.abort()
                raise DoeIoError("ERROR set after GO")
            if status & STATUS_DATA_OBJECT_READY:
                return polls
        self.abort()
        raise DoeIoError(f"no DATA_OBJECT_READY after {self.max_polls} polls")

    def recv(self, vid: int, typ: int) -> DoeResponse:
        """pci_doe_recv_resp: read and acknowledge every DW of the response."""
        header1 = self.rd(DOE_READ)
        self.wr(DOE_READ, 0)
        if header1 != vid | (typ << 16):
            raise DoeIoError(f"response header {header1:#010x} is not {vid:04x}:{typ:02x}")
        header2 = self.rd(DOE_READ)
        self.wr(DOE_READ, 0)
        length = header2 & 0x3FFFF or DOE_MAX_DW
        if length < 2:
            raise DoeIoError(f"response length {length} DW is shorter than its header")
        payload: list[int] = []
        for i in range(length - 2):
            if i == length - 3 and not self.rd(DOE_STATUS) & STATUS_DATA_OBJECT_READY:
                # doe.c requires DOR until the last DW is acknowledged.
                raise DoeIoError("DATA_OBJECT_READY dropped before the last DW")
            payload.append(self.rd(DOE_READ))
            self.wr(DOE_READ, 0)
        if self.rd(DOE_STATUS) & STATUS_ERROR:
            raise DoeIoError("ERROR set after the response was read")
        return DoeResponse(header1, header2, payload)

    def exchange(self, vid: int, typ: int, payload: list[int]) -> DoeResponse:
        self.send(vid, typ, payload)
        self.wait_ready()
        return self.recv(vid, typ)

    def exchange_bytes(self, typ: int, data: bytes, vid: int = PCI_VENDOR_ID_PCI_SIG) -> bytes:
        """Send `data` (zero-padded to DWs, as doe.c does) and return the response payload."""
        padded = data + b"\0" * (-len(data) % 4)
        dws = list(struct.unpack(f"<{len(padded) // 4}I", padded))
        return self.exchange(vid, typ, dws).data

    def discover(self, version: int = 2) -> list[tuple[int, int]]:
        """pci_doe_cache_features: walk the discovery indexes until next == 0."""
        found: list[tuple[int, int]] = []
        index = 0
        for _ in range(256):
            resp = self.exchange(PCI_VENDOR_ID_PCI_SIG, DOE_TYPE_DISCOVERY,
                                 [index | (version << 8)])
            if not resp.payload:
                raise DoeIoError("empty discovery response")
            dw = resp.payload[0]
            found.append((dw & 0xFFFF, (dw >> 16) & 0xFF))
            index = (dw >> 24) & 0xFF
            if index == 0:
                return found
        raise DoeIoError("discovery did not terminate within 256 entries")
