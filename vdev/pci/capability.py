"""Capability objects: each owns the layout and masks of its registers.

A capability is placed by `ConfigSpace`, which decides its offset, writes the
header (ID and next pointer, PCIe r6.0 §7.5.3 / §7.6.3) and then asks the
capability for its body registers at that offset.  The capability keeps
references to its own registers so the device model can read and drive them
without knowing offsets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from vdev.pci.register import Register


class _Placed(ABC):
    """What both capability lists share: a header of `HEADER_SIZE` bytes written by
    `ConfigSpace`, then the body registers the capability lays out itself."""

    HEADER_SIZE: ClassVar[int]
    cap_id: int
    name: str

    def __init__(self) -> None:
        self.offset = -1

    @property
    @abstractmethod
    def size(self) -> int:
        """Total size in bytes including the header."""

    @abstractmethod
    def body_registers(self, base: int) -> list[Register]:
        """Registers from `base + HEADER_SIZE` up to `base + size`, at absolute offsets."""

    def place(self, base: int) -> list[Register]:
        self.offset = base
        return self.body_registers(base)

    def flr(self) -> None:  # noqa: B027 - optional hook, default no model state
        """Reset model state beyond register values (registers are reset by ConfigSpace)."""


class Capability(_Placed):
    """A capability in the legacy list (0x40..0xFF): ID and next pointer (§7.5.3)."""

    HEADER_SIZE = 2


class ExtCapability(_Placed):
    """A PCI Express extended capability (0x100..0xFFF): ID, version and next offset
    (§7.6.3)."""

    HEADER_SIZE = 4
    version: int
