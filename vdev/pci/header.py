"""The Type 0 configuration header, 0x00..0x3F (PCIe r6.0 §7.5.1.1, §7.5.1.2).

Identity and class come from the profile; Command is read-write (QEMU keeps
its own copy for BAR decode but reads ours live, docs/vfio-user-qemu.md §6.1);
Status has Capabilities List set and RW1C error bits; BARs are built by
`bar.MemoryBar`; the Expansion ROM BAR is hardwired to 0 because we have no
ROM; Interrupt Pin comes from the profile (0 = no INTx).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vdev.pci.bar import MemoryBar
from vdev.pci.register import Register

# Offsets (include/uapi/linux/pci_regs.h PCI_*)
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
CLASS_REVISION = 0x08
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BIST = 0x0F
BAR_BASE = 0x10
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D

# Command bits (§7.5.1.1.3)
CMD_IO = 1 << 0
CMD_MEMORY = 1 << 1
CMD_MASTER = 1 << 2
CMD_PARITY = 1 << 6
CMD_SERR = 1 << 8
CMD_INTX_DISABLE = 1 << 10
# I/O Space Enable is hardwired 0: we have no I/O BARs (§7.5.1.1.3 permits it).
COMMAND_RW = CMD_MEMORY | CMD_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE

# Status bits (§7.5.1.1.4)
STATUS_INTERRUPT = 1 << 3
STATUS_CAP_LIST = 1 << 4
STATUS_W1C = (1 << 8) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15)

CommandObserver = Callable[[int, int], None]
"""Called as ``observer(old_command, new_command)`` after every Command write."""

BarObserver = Callable[[int, int, int], None]
"""Called as ``observer(bar_index, old_value, new_value)`` after a write to a BAR's
dword(s); values are the whole register (64 bits for a 64-bit BAR), type bits included,
so sizing (all-ones) writes show up as changes too."""


@dataclass(frozen=True)
class HeaderIdentity:
    vendor_id: int
    device_id: int
    subsystem_vendor_id: int
    subsystem_id: int
    class_code: int
    revision: int
    interrupt_pin: int = 0


class Type0Header:
    """Registers 0x00..0x3F of an endpoint function."""

    def __init__(self, identity: HeaderIdentity, bars: Sequence[MemoryBar]) -> None:
        self.identity = identity
        self.bars = tuple(bars)
        self.command_observers: list[CommandObserver] = []
        self.bar_observers: list[BarObserver] = []
        self._last_command = 0
        self._bar_regs: dict[int, list[Register]] = {}
        self._last_bar: dict[int, int] = {}
        used: set[int] = set()
        for bar in self.bars:
            slots = {bar.index, bar.index + 1} if bar.is_64bit else {bar.index}
            if used & slots:
                raise ValueError(f"BAR{bar.index} overlaps another BAR")
            used |= slots
        self._bar_slots = used
        self.command = Register(
            "COMMAND", COMMAND, 2, rw=COMMAND_RW, on_write=self._command_written
        )
        self.status = Register("STATUS", STATUS, 2, reset=STATUS_CAP_LIST, w1c=STATUS_W1C)

    def _command_written(self, _value: int, _be: int) -> None:
        old, new = self._last_command, self.command.value
        self._last_command = new
        for observer in self.command_observers:
            observer(old, new)

    def bar_value(self, index: int) -> int:
        """The BAR as programmed (64-bit BARs combined), type bits included."""
        value = 0
        for i, reg in enumerate(self._bar_regs.get(index, [])):
            value |= reg.value << (32 * i)
        return value

    def _bar_written(self, index: int) -> None:
        old, new = self._last_bar.get(index, 0), self.bar_value(index)
        self._last_bar[index] = new
        for observer in self.bar_observers:
            observer(index, old, new)

    def flr(self) -> None:
        """After the registers were reset: tell observers if Command changed.

        BARs return to 0 silently: FLR is itself the event a BAR observer's owner
        acts on (TDISP: CONFIG_UNLOCKED), not a BAR write."""
        for index in self._bar_regs:
            self._last_bar[index] = self.bar_value(index)
        if self.command.value != self._last_command:
            self._command_written(0, 0)

    def _bar_hook(self, index: int) -> Callable[[int, int], None]:
        def hook(_value: int, _be: int) -> None:
            self._bar_written(index)

        return hook

    def registers(self, cap_pointer: int) -> list[Register]:
        ident = self.identity
        regs = [
            Register("VENDOR_ID", VENDOR_ID, 2, reset=ident.vendor_id),
            Register("DEVICE_ID", DEVICE_ID, 2, reset=ident.device_id),
            self.command,
            self.status,
            Register(
                "CLASS_REVISION",
                CLASS_REVISION,
                4,
                reset=(ident.class_code << 8) | ident.revision,
            ),
            # Cache Line Size is RW for compatibility but has no effect on PCIe (§7.5.1.1.7).
            Register("CACHE_LINE_SIZE", CACHE_LINE_SIZE, 1, rw=0xFF),
            # Latency Timer is hardwired 0 on PCIe (§7.5.1.1.8); header type 0, single function.
            Register("LATENCY_TIMER", LATENCY_TIMER, 1),
            Register("HEADER_TYPE", HEADER_TYPE, 1, reset=0x00),
            Register("BIST", BIST, 1),
            Register(
                "SUBSYSTEM_VENDOR_ID", SUBSYSTEM_VENDOR_ID, 2, reset=ident.subsystem_vendor_id
            ),
            Register("SUBSYSTEM_ID", SUBSYSTEM_ID, 2, reset=ident.subsystem_id),
            # No expansion ROM: the whole register is hardwired 0 (§7.5.1.2.4).
            Register("ROM_ADDRESS", ROM_ADDRESS, 4),
            Register("CAPABILITY_LIST", CAPABILITY_LIST, 1, reset=cap_pointer),
            Register("INTERRUPT_LINE", INTERRUPT_LINE, 1, rw=0xFF),
            Register("INTERRUPT_PIN", INTERRUPT_PIN, 1, reset=ident.interrupt_pin),
        ]
        for bar in self.bars:
            bar_regs = bar.registers(BAR_BASE, on_write=self._bar_hook(bar.index))
            self._bar_regs[bar.index] = bar_regs
            self._last_bar[bar.index] = bar.type_bits
            regs.extend(bar_regs)
        # Unimplemented BAR slots read 0 and ignore writes (§7.5.1.2.1).
        for index in range(6):
            if index not in self._bar_slots:
                regs.append(Register(f"BAR{index}", BAR_BASE + 4 * index, 4))
        return regs
