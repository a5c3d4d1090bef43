"""A step-by-step imitation of Linux drivers/pci/doe.c over config accesses (reference §2)."""

from __future__ import annotations

from dataclasses import dataclass

from vdev.doe_mailbox import (
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

from .fakes import Cfg

EXT_CAP_ID_DOE = 0x2E


class DoeIoError(Exception):
    pass


@dataclass
class Response:
    header1: int
    header2: int
    payload: list[int]


class LinuxDoe:
    def __init__(self, cfg: Cfg, cap: int) -> None:
        self.cfg = cfg
        self.cap = cap
        self.ctrl_bits = 0  # e.g. CTRL_INT_EN for a driver that uses interrupts (Linux does not)

    def rd(self, reg: int) -> int:
        return self.cfg.read(self.cap + reg)

    def wr(self, reg: int, value: int) -> None:
        self.cfg.write(self.cap + reg, value)

    def abort(self) -> None:
        """pci_doe_abort: write ABORT, poll once, require ERROR=0 and BUSY=0."""
        self.wr(DOE_CTRL, CTRL_ABORT)
        status = self.rd(DOE_STATUS)
        if status & (STATUS_ERROR | STATUS_BUSY):
            raise DoeIoError(f"abort failed, status {status:#x}")

    def send(self, vid: int, typ: int, payload: list[int]) -> None:
        """pci_doe_send_req."""
        status = self.rd(DOE_STATUS)
        if status & STATUS_BUSY:
            raise DoeIoError("busy")
        if status & STATUS_ERROR:
            raise DoeIoError("error before send")
        self.wr(DOE_WRITE, vid | (typ << 16))
        self.wr(DOE_WRITE, (2 + len(payload)) & 0x3FFFF)
        for dw in payload:
            self.wr(DOE_WRITE, dw)
        self.wr(DOE_CTRL, CTRL_GO | self.ctrl_bits)

    def wait_ready(self) -> None:
        """The first poll must already see DOR (the device answers synchronously)."""
        status = self.rd(DOE_STATUS)
        if status & STATUS_ERROR:
            self.abort()
            raise DoeIoError("error after GO")
        if not status & STATUS_DATA_OBJECT_READY:
            raise DoeIoError("no DOR on the first poll")

    def recv(self, vid: int, typ: int) -> Response:
        """pci_doe_recv_resp."""
        header1 = self.rd(DOE_READ)
        self.wr(DOE_READ, 0)
        if header1 != vid | (typ << 16):
            raise DoeIoError(f"header mismatch {header1:#x}")
        header2 = self.rd(DOE_READ)
        self.wr(DOE_READ, 0)
        length = header2 & 0x3FFFF or 1 << 18
        if length < 2:
            raise DoeIoError("short")
        payload: list[int] = []
        for i in range(length - 2):
            if i == length - 3:
                status = self.rd(DOE_STATUS)
                assert status & STATUS_DATA_OBJECT_READY, "DOR must be 1 before the last ack"
            payload.append(self.rd(DOE_READ))
            self.wr(DOE_READ, 0)
        if self.rd(DOE_STATUS) & STATUS_ERROR:
            raise DoeIoError("error after read")
        return Response(header1, header2, payload)

    def exchange(self, vid: int, typ: int, payload: list[int]) -> Response:
        self.send(vid, typ, payload)
        self.wait_ready()
        return self.recv(vid, typ)

    def discover(self, version: int = 2) -> list[tuple[int, int]]:
        """pci_doe_cache_features: walk the discovery indexes until next == 0."""
        found: list[tuple[int, int]] = []
        index = 0
        while True:
            resp = self.exchange(0x0001, 0x00, [index | (version << 8)])
            if not resp.payload:
                raise DoeIoError("empty discovery response")
            dw = resp.payload[0]
            found.append((dw & 0xFFFF, (dw >> 16) & 0xFF))
            index = (dw >> 24) & 0xFF
            if index == 0:
                return found
