"""DOE extended capability, ID 0x2E, version 2 (PCIe r6.0 §7.9.24).

A thin register view over a `DoeMailbox`: every body register is model
backed (`on_read`) and forwards writes to the mailbox.  Version 2 makes Linux
send Discovery requests with version 2 in bits 15:8 (docs/linux-pci-tsm.md §7.1).
"""

from __future__ import annotations

from vdev.doe.mailbox import (
    DOE_CAP,
    DOE_CAP_SIZEOF,
    DOE_CTRL,
    DOE_READ,
    DOE_STATUS,
    DOE_WRITE,
    DoeMailbox,
)
from vdev.pci.capability import ExtCapability
from vdev.pci.register import Register

EXT_CAP_ID_DOE = 0x2E
DOE_CAP_VERSION = 2


class DoeCap(ExtCapability):
    cap_id = EXT_CAP_ID_DOE
    version = DOE_CAP_VERSION
    name = "DOE"

    def __init__(self, mailbox: DoeMailbox) -> None:
        super().__init__()
        self.mailbox = mailbox

    @property
    def size(self) -> int:
        return DOE_CAP_SIZEOF

    def _register(self, base: int, rel: int, name: str) -> Register:
        read, write = self.mailbox.accessors(rel)
        return Register(name, base + rel, 4, on_read=read, on_write=write)

    def body_registers(self, base: int) -> list[Register]:
        return [
            self._register(base, DOE_CAP, "DOE_CAP"),
            self._register(base, DOE_CTRL, "DOE_CTRL"),
            self._register(base, DOE_STATUS, "DOE_STATUS"),
            self._register(base, DOE_WRITE, "DOE_WRITE"),
            self._register(base, DOE_READ, "DOE_READ"),
        ]

    def flr(self) -> None:
        self.mailbox.reset()
