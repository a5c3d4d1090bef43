"""The contract between the vfio-user adapter and a device model.

The vfio-user server (`vdev.vfio_user.server`) knows nothing about PCI
semantics: it turns wire messages into calls on a `VfioUserDevice` and hands
the device two small services, an `IrqSink` to signal interrupts and a
`DmaAccess` to reach guest memory.  Device models never import the server.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class RegionIndex(enum.IntEnum):
    """vfio PCI region indices (linux/vfio.h VFIO_PCI_*_REGION_INDEX)."""

    BAR0 = 0
    BAR1 = 1
    BAR2 = 2
    BAR3 = 3
    BAR4 = 4
    BAR5 = 5
    ROM = 6
    CONFIG = 7
    VGA = 8


class IrqIndex(enum.IntEnum):
    """vfio PCI interrupt indices (linux/vfio.h VFIO_PCI_*_IRQ_INDEX)."""

    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4


#: The first index of a device-specific region: after the standard ones.
FIRST_DEVICE_REGION = len(RegionIndex)


@dataclass(frozen=True)
class RegionType:
    """What a device-specific region is (linux/vfio.h struct
    vfio_region_info_cap_type): a client finds the region by these two numbers."""

    type: int
    subtype: int


@dataclass(frozen=True)
class RegionInfo:
    """One vfio region as the device exposes it (size 0 = absent).  A
    device-specific region (index FIRST_DEVICE_REGION on) carries its type."""

    index: int
    size: int
    readable: bool = True
    writable: bool = True
    type: RegionType | None = None


class IrqSink(Protocol):
    """Interrupt delivery provided by the adapter."""

    def trigger(self, index: int, vector: int) -> None:
        """Signal an edge interrupt (MSI/MSI-X vector, or an INTx assertion)."""


class DmaAccess(Protocol):
    """Guest-physical memory access provided by the adapter."""

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class VfioUserDevice(Protocol):
    """What the vfio-user server needs from a device model."""

    def regions(self) -> Sequence[RegionInfo]:
        """Every region index 0..8, absent ones with size 0, then the device-specific
        ones, if any, at consecutive indices from FIRST_DEVICE_REGION."""

    def irq_count(self, index: int) -> int:
        """Number of vectors for an interrupt index (0 = not supported)."""

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        """Read `count` bytes; the caller has bounds-checked against `regions()`."""

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        """Write bytes; the caller has bounds-checked against `regions()`."""

    def reset(self) -> None:
        """VFIO_DEVICE_RESET: the device-level reset QEMU asks for at system reset."""

    def attach(self, irq: IrqSink, dma: DmaAccess) -> None:
        """A client connected: interrupts and DMA now go to it."""

    def detach(self) -> None:
        """The client went away: drop references to its services."""
