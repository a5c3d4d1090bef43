"""Capability objects: each owns the layout and masks of its registers.

A capability is placed by `ConfigSpace`, which decides its offset, writes the
header (ID and next pointer, PCIe r6.0 §7.5.3 / §7.6.3) and then asks the
capability for its body registers at that offset.  The capability keeps
references to its own registers so the device model can read and drive them
without knowing offsets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from vdev.pci.register import Register


class Capability(ABC):
    """A capability in the legacy list (0x40..0xFF): 2-byte header, then body."""

    cap_id: int
    name: str

    def __init__(self) -> None:
        self.offset = -1

    @property
    @abstractmethod
    def size(self) -> int:
        """Total size in bytes including the 2-byte header."""

    @abstractmethod
    def body_registers(self, base: int) -> list[Register]:
        """Registers from `base + 2` up to `base + size`, at absolute offsets."""

    def place(self, base: int) -> list[Register]:
        self.offset = base
        return self.body_registers(base)

    def flr(self) -> None:  # noqa: B027 - optional hook, default no model state
        """Reset model state beyond register values (registers are reset by ConfigSpace)."""


class ExtCapability(ABC):
    """A PCI Express extended capability (0x100..0xFFF): 4-byte header, then body."""

    cap_id: int
    version: int
    name: str

    def __init__(self) -> None:
        self.offset = -1

    @property
    @abstractmethod
    def size(self) -> int:
        """Total size in bytes including the 4-byte header."""

    @abstractmethod
    def body_registers(self, base: int) -> list[Register]:
        """Registers from `base + 4` up to `base + size`, at absolute offsets."""

    def place(self, base: int) -> list[Register]:
        self.offset = base
        return self.body_registers(base)

    def flr(self) -> None:  # noqa: B027 - optional hook, default no model state
        """Reset model state beyond register values (registers are reset by ConfigSpace)."""
