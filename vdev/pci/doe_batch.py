"""The DOE batch region: a device's DOE mailboxes, moved in bulk by the vfio-user client.

A guest's DOE driver moves one DW per config access: a 4 KiB response is 1024
reads of the Read Data Mailbox and 1024 writes to it (PCIe r6.2 §6.30.2,
§7.9.24.5-6).  Over vfio-user each is a round trip, which makes a DOE exchange
cost thousands of them.  This device-specific vfio region lets a client that
knows it (`make qemu`'s QEMU with `x-doe-batch=on`, qemu/README.md) keep those
three kinds of access local and exchange them with the device in bulk;
docs/vfio-user-qemu.md §6.6 describes the client's side.  The mailbox stays
the device's: every DW goes through the same `DoeMailbox` calls a config access
makes, in the guest's order, and DOE Control and Status are still read and
written as config space.

The region's type is VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x0001 (the PCI-SIG
vendor ID) with subtype 0x2E (the DOE Extended Capability ID): a region that
serves PCI-SIG's DOE capability.  It has a window per DOE capability at the
capability's config-space offset << 21; within a window:

  +0x00 WRITE_DATA  write n DWs: n writes to the Write Data Mailbox, in order
  +0x08 READ_ACK    write one DW n: n writes to the Read Data Mailbox
  +0x0C READ_AVAIL  read one DW: response DWs left, the current one included
                    (0 unless Data Object Ready)
  +0x10 READ_DATA   read n DWs: the next n response DWs from the current one,
                    none acknowledged; more than READ_AVAIL is refused

WRITE_DATA and READ_DATA take any whole number of DWs at their offset (they
are ports, not arrays).  Anything else is refused with the reason, which the
vfio-user server turns into an EINVAL reply and a log line.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from vdev.doe.data_object import PCI_SIG_VENDOR_ID
from vdev.doe.mailbox import DoeMailbox, DoeRejected
from vdev.pci.device_api import RegionType
from vdev.pci.doe_cap import EXT_CAP_ID_DOE

VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 1 << 31  # linux/vfio.h
REGION_TYPE = RegionType(VFIO_REGION_TYPE_PCI_VENDOR_TYPE | PCI_SIG_VENDOR_ID, EXT_CAP_ID_DOE)

WINDOW_SHIFT = 21
WRITE_DATA = 0x00
READ_ACK = 0x08
READ_AVAIL = 0x0C
READ_DATA = 0x10
#: Config space is 4 KiB, so a window for every DW-aligned capability offset fits.
REGION_SIZE = 0x1000 << WINDOW_SHIFT

_WINDOW_MASK = (1 << WINDOW_SHIFT) - 1


class DoeBatchRegion:
    """The region over the device's DOE mailboxes, keyed by capability offset."""

    type = REGION_TYPE
    size = REGION_SIZE

    def __init__(self, mailboxes: Mapping[int, DoeMailbox]) -> None:
        for cap in mailboxes:
            if not (0x100 <= cap < 0x1000 and cap % 4 == 0):
                raise ValueError(f"DOE capability offset {cap:#x} is not in extended "
                                 "config space")
        self._mailboxes = dict(mailboxes)

    def _mailbox(self, offset: int) -> tuple[DoeMailbox, int]:
        cap, reg = offset >> WINDOW_SHIFT, offset & _WINDOW_MASK
        mailbox = self._mailboxes.get(cap)
        if mailbox is None:
            raise ValueError(f"DOE batch region: no DOE capability at {cap:#x}")
        return mailbox, reg

    def read(self, offset: int, count: int) -> bytes:
        mailbox, reg = self._mailbox(offset)
        if reg == READ_AVAIL and count == 4:
            return mailbox.available().to_bytes(4, "little")
        if reg == READ_DATA and count and count % 4 == 0:
            try:
                words = mailbox.peek(count // 4)
            except DoeRejected as exc:
                raise ValueError(f"DOE batch region READ_DATA: {exc}") from None
            return struct.pack(f"<{len(words)}I", *words)
        raise ValueError(f"DOE batch region: no {count}-byte read at window offset {reg:#x}")

    def write(self, offset: int, data: bytes) -> None:
        mailbox, reg = self._mailbox(offset)
        count = len(data)
        if reg == WRITE_DATA and count and count % 4 == 0:
            for dw in struct.unpack(f"<{count // 4}I", data):
                mailbox.write_write_mailbox(dw)
            return
        if reg == READ_ACK and count == 4:
            acks = int.from_bytes(data, "little")
            # Bounded by what a response can be, so a bad count cannot stall the device.
            if acks > mailbox.max_object_dw:
                raise ValueError(f"DOE batch region READ_ACK of {acks} DWs exceeds the "
                                 f"mailbox's {mailbox.max_object_dw}")
            for _ in range(acks):
                mailbox.write_read_mailbox(0)
            return
        raise ValueError(f"DOE batch region: no {count}-byte write at window offset {reg:#x}")
