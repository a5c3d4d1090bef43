"""BAR0: the device's own MMIO registers, plus the MSI-X table and PBA.

BAR0 is a 64-bit non-prefetchable memory BAR of `profile.bar0_size` bytes
(default 64 KiB).  All registers are 32-bit, little-endian; any access size
and alignment works (bytes are assembled from the registers they cover),
unmapped offsets read 0 and ignore writes.

  Offset  Name         Access  Meaning
  0x000   ID           RO      0x56454456: the bytes "VDEV" in memory order
  0x004   VERSION      RO      register map version, major << 16 | minor (1.0)
  0x008   INFO         RO      bits 15:0 MSI-X vector count
  0x010   SCRATCH0     RW      free for software; reset to 0 by FLR
  0x014   SCRATCH1     RW
  0x018   SCRATCH2     RW
  0x01C   SCRATCH3     RW
  0x020   DOORBELL     WO      write N: raise MSI-X vector N (N < vectors); reads 0
  0x024   IRQ_COUNT    RO      interrupts the device raised since the last reset
  0x028   RESET_COUNT  RO      resets (FLR or device reset) since the process
                               started; not cleared by reset, so a guest can
                               see that its FLR happened
  0x02C   MARKER       WO      write N: the device logs "guest marker N" with its
                               activity counters (config and BAR accesses, DOE
                               exchanges), so a guest can bracket a step and
                               the host can see what the step cost
  0x1000  MSI-X table  --      16 bytes per vector; emulated by QEMU, which never
                               forwards it: here it reads 0 and ignores writes
  PBA     MSI-X PBA    RO      at the next 4 KiB boundary after the table;
                               answered from the model (PCIe r6.0 §7.7.2.5)

Doorbell delivery: QEMU owns MSI-X enable/masking (docs/vfio-user-qemu.md
§7), so the doorbell always asks the attached IrqSink to signal the
vector and lets the adapter and QEMU decide what reaches the guest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from vdev.pci.msix_cap import MSIX_ENTRY_SIZE, MsixState
from vdev.pci.register import Register, RegisterFile
from vdev.profiles import MSIX_TABLE_OFFSET

log = logging.getLogger(__name__)

REG_ID = 0x000
REG_VERSION = 0x004
REG_INFO = 0x008
REG_SCRATCH0 = 0x010
SCRATCH_COUNT = 4
REG_DOORBELL = 0x020
REG_IRQ_COUNT = 0x024
REG_RESET_COUNT = 0x028
REG_MARKER = 0x02C

ID_MAGIC = int.from_bytes(b"VDEV", "little")
REGISTER_MAP_VERSION = 0x0001_0000
REGISTER_WINDOW = 0x1000


def msix_pba_offset(vectors: int) -> int:
    """PBA offset in BAR0: the first 4 KiB boundary after the table."""
    return (MSIX_TABLE_OFFSET + MSIX_ENTRY_SIZE * vectors + 0xFFF) & ~0xFFF


class DeviceRegisters:
    """The BAR0 register block."""

    def __init__(
        self,
        size: int,
        msix: MsixState,
        raise_vector: Callable[[int], None],
        on_marker: Callable[[int], None] | None = None,
    ) -> None:
        self.size = size
        self.on_marker = on_marker
        self.msix = msix
        self.raise_vector = raise_vector
        self.table_offset = MSIX_TABLE_OFFSET
        self.pba_offset = msix_pba_offset(msix.vectors)
        self.irq_count = 0
        self.reset_count = 0
        self.file = RegisterFile(REGISTER_WINDOW, "bar0")
        self.scratch = [
            Register(f"SCRATCH{i}", REG_SCRATCH0 + 4 * i, 4, rw=0xFFFF_FFFF)
            for i in range(SCRATCH_COUNT)
        ]
        self.file.add_all(
            [
                Register("ID", REG_ID, 4, reset=ID_MAGIC),
                Register("VERSION", REG_VERSION, 4, reset=REGISTER_MAP_VERSION),
                Register("INFO", REG_INFO, 4, reset=msix.vectors),
                *self.scratch,
                Register("DOORBELL", REG_DOORBELL, 4, on_write=self._doorbell),
                Register("IRQ_COUNT", REG_IRQ_COUNT, 4, on_read=lambda: self.irq_count),
                Register("RESET_COUNT", REG_RESET_COUNT, 4, on_read=lambda: self.reset_count),
                Register("MARKER", REG_MARKER, 4, on_write=self._marker),
            ]
        )

    def _doorbell(self, value: int, byte_enable: int) -> None:
        if byte_enable != 0xFFFF_FFFF:
            return  # a partial write carries no complete vector number
        if value >= self.msix.vectors:
            log.warning("doorbell for MSI-X vector %d, device has %d", value, self.msix.vectors)
            return
        self.raise_vector(value)

    def _marker(self, value: int, byte_enable: int) -> None:
        if self.on_marker is not None:
            self.on_marker(value & byte_enable)

    def note_interrupt(self) -> None:
        self.irq_count = (self.irq_count + 1) & 0xFFFF_FFFF

    def read(self, offset: int, count: int) -> bytes:
        if offset + count <= REGISTER_WINDOW:
            return self.file.read(offset, count)  # the common case, no assembling
        out = bytearray()
        pos, end = offset, offset + count
        while pos < end:
            if pos < REGISTER_WINDOW:
                stop = min(end, REGISTER_WINDOW)
                out += self.file.read(pos, stop - pos)
            elif self.pba_offset <= pos < self.pba_offset + self.msix.pba_size:
                stop = min(end, self.pba_offset + self.msix.pba_size)
                out += self.msix.read_pba(pos - self.pba_offset, stop - pos)
            else:
                stop = self._next_boundary(pos, end)
                out += bytes(stop - pos)
            pos = stop
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if offset < REGISTER_WINDOW:
            stop = min(end, REGISTER_WINDOW)
            self.file.write(offset, data[: stop - offset])
        # The table is QEMU's and the PBA is read-only (§7.7.2.5): other writes are dropped.

    def _next_boundary(self, pos: int, end: int) -> int:
        if pos < self.pba_offset:
            return min(end, self.pba_offset)
        return end

    def reset(self) -> None:
        """FLR / device reset: registers to reset values, counters cleared, reset counted."""
        self.file.reset(keep_sticky=False)
        self.irq_count = 0
        self.reset_count = (self.reset_count + 1) & 0xFFFF_FFFF
