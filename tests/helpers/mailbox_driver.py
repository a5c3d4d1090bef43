"""A guest-side driver of the mailbox protocol, over any (read, write) accessors.

Mirrors what guest/vtsm/vtsm.c does, so the host tests exercise the
same register sequence as the kernel module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tsm.mailbox_protocol import Op
from vdev.tsm_mailbox.protocol import (
    DOORBELL_RING,
    IN_WINDOW,
    OUT_WINDOW,
    REASON_OFFSET,
    REG_DOORBELL,
    REG_ERROR,
    REG_IN_LEN,
    REG_IN_RC,
    REG_OP,
    REG_OUT_LEN,
    REG_OUT_TYPE,
    REG_REASON_LEN,
    REG_RESULT,
    REG_STATUS,
    REG_TARGET,
    REG_TDI_STATE,
    Status,
    pack_target,
    to_s32,
)

Read = Callable[[int, int], bytes]
Write = Callable[[int, bytes], None]


@dataclass
class Outcome:
    status: Status
    result: int = 0
    reason: str = ""
    data: bytes = b""
    error: int = 0
    tdi_state: int = 0xFF  # TDI_STATE (1.2)


class MailboxDriver:
    def __init__(self, read: Read, write: Write) -> None:
        self.read = read
        self.write = write

    def rd32(self, off: int) -> int:
        return int.from_bytes(self.read(off, 4), "little")

    def wr32(self, off: int, value: int) -> None:
        self.write(off, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def ring(self, op: int, wait: bool = True) -> Status:
        """Write OP, ring, and (like vtsm) poll while BUSY, bounded by 2 s."""
        self.wr32(REG_OP, op)
        self.wr32(REG_DOORBELL, DOORBELL_RING)
        status = Status(self.rd32(REG_STATUS))
        deadline = time.monotonic() + 2.0
        while wait and status == Status.BUSY and time.monotonic() < deadline:
            time.sleep(0.001)
            status = Status(self.rd32(REG_STATUS))
        return status

    def start(self, op: Op, segment: int = 0, bus: int = 1, devfn: int = 0,
              wait: bool = True, data: bytes = b"") -> Status:
        """`data`: IN bytes for the operation (LOCK's BAR records, version 1.1)."""
        self.wr32(REG_TARGET, pack_target(segment, bus, devfn))
        if data:
            self.write(IN_WINDOW, data)
            self.wr32(REG_IN_LEN, len(data))
        return self.ring(op, wait)

    def request(self) -> tuple[int, bytes]:
        length = self.rd32(REG_OUT_LEN)
        return self.rd32(REG_OUT_TYPE), self.read(OUT_WINDOW, length)

    def respond(self, payload: bytes, rc: int = 0) -> Status:
        if payload:
            self.write(IN_WINDOW, payload)
        self.wr32(REG_IN_LEN, len(payload))
        self.wr32(REG_IN_RC, rc)
        return self.ring(Op.DOE_RESPONSE)

    def outcome(self) -> Outcome:
        status = Status(self.rd32(REG_STATUS))
        reason = self.read(REASON_OFFSET, self.rd32(REG_REASON_LEN)).decode()
        data = self.read(OUT_WINDOW, self.rd32(REG_OUT_LEN)) if status == Status.DONE else b""
        return Outcome(status, to_s32(self.rd32(REG_RESULT)), reason, data, self.rd32(REG_ERROR),
                       self.rd32(REG_TDI_STATE))

    def run(self, op: Op, doe: Callable[[int, bytes], bytes], data: bytes = b"") -> Outcome:
        """One whole operation on 0000:01:00.0, answering DOE requests with `doe(type, payload)`."""
        status = self.start(op, data=data)
        while status == Status.DOE_REQUEST:
            status = self.respond(doe(*self.request()))
        return self.outcome()
