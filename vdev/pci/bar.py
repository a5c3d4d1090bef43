"""Base Address Registers in the Type 0 header (PCIe r6.0 §7.5.1.2.1).

A memory BAR's low 4 bits are read-only type bits; the address bits below the
BAR's size are hardwired to 0.  Software sizes a BAR by writing all-ones and
reading back: the read returns the size mask with the type bits.  Modelled
as RW masks that exclude the size bits, so sizing falls out of the register
model.  QEMU emulates BAR addresses itself (docs/vfio-user-qemu.md §6.1) but still
forwards the writes, so the model must take them without complaint.

The address bits are kept across FLR (sticky in this model), although a real
function's FLR clears them.  The model's BAR is only a mirror of QEMU's
emulated copy, which a forwarded DEVCTL Initiate-FLR does not reset; Linux's
pci_restore_state() after the FLR reads the BAR from that copy, sees the old
address and writes nothing back.  Clearing the mirror would leave the device
believing BAR0 is at 0 while the guest uses it at its real address, and the
TDISP interface report (built from the BAR) would be wrong.  QEMU's system
reset writes 0 to every BAR after DEVICE_RESET, which keeps the mirror in step.
"""

from __future__ import annotations

from dataclasses import dataclass

from vdev.pci.register import Register, WriteHook

BAR_MEM_TYPE_64 = 0x4  # bits 2:1 = 10b: 64-bit decoder (§7.5.1.2.1)
BAR_MEM_PREFETCH = 0x8
BAR_ADDRESS_MASK_32 = 0xFFFF_FFF0


@dataclass(frozen=True)
class MemoryBar:
    """A memory BAR: `index` 0..5, `size` a power of two >= 16 bytes."""

    index: int
    size: int
    is_64bit: bool = True
    prefetchable: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 5:
            raise ValueError(f"BAR index {self.index} not in 0..5")
        if self.is_64bit and self.index == 5:
            raise ValueError("a 64-bit BAR cannot start at BAR5")
        if self.size < 16 or self.size & (self.size - 1):
            raise ValueError(f"BAR{self.index} size {self.size:#x} not a power of two >= 16")

    @property
    def type_bits(self) -> int:
        return (BAR_MEM_TYPE_64 if self.is_64bit else 0) | (
            BAR_MEM_PREFETCH if self.prefetchable else 0
        )

    def registers(
        self, header_base: int = 0x10, on_write: WriteHook | None = None
    ) -> list[Register]:
        """The BAR's dword(s); a 64-bit BAR also owns the next slot (upper address).

        `on_write` is attached to every dword, so the owner sees each BAR write
        (TDISP enforcement compares the BAR before and after)."""
        off = header_base + 4 * self.index
        full = (1 << 64) - 1 if self.is_64bit else 0xFFFF_FFFF
        addr_mask = full & ~(self.size - 1) & ~0xF
        regs = [
            Register(
                f"BAR{self.index}",
                off,
                4,
                reset=self.type_bits,
                rw=addr_mask & 0xFFFF_FFFF,
                sticky=addr_mask & 0xFFFF_FFFF,
                on_write=on_write,
            )
        ]
        if self.is_64bit:
            regs.append(
                Register(f"BAR{self.index + 1}", off + 4, 4, rw=addr_mask >> 32,
                         sticky=addr_mask >> 32, on_write=on_write)
            )
        return regs
