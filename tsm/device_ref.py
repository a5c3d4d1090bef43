"""Which device the TSM talks to, and what the host believes about its BARs.

`DeviceRef` names the DSM (segment/bus/devfn of function 0 of the device whose DOE
mailbox carries SPDM); `DeviceRef.tdi(fn)` gives a TDI's INTERFACE_ID, whose
FUNCTION_ID is the function's Requester ID (PCIe 6.2 §11.2, Table 11-1 INTERFACE_ID).
The segment is only marked valid (bit 24) for a non-zero segment: devices in segment 0
commonly key their TDIs by the bare RID (docs/protocols.md §8.5).

`ExpectedBar` is the host's view of one memory BAR (e.g. read by the guest from config
space), which the interface report must match (§11.3.11: the report lists the TDI's
MMIO ranges; the TSM/TVM checks them before START).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tdisp.device_interface import InterfaceId


@dataclass(frozen=True)
class DeviceRef:
    segment: int = 0
    bus: int = 1
    devfn: int = 0

    @classmethod
    def parse(cls, text: str) -> DeviceRef:
        """'SSSS:BB:DD.F' or 'BB:DD.F' (hex)."""
        m = re.fullmatch(
            r"(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])", text
        )
        if not m or int(m.group(3), 16) > 31:
            raise ValueError(f"bad PCI address {text!r} (want SSSS:BB:DD.F)")
        seg = int(m.group(1), 16) if m.group(1) else 0
        return cls(seg, int(m.group(2), 16), (int(m.group(3), 16) << 3) | int(m.group(4)))

    @property
    def device(self) -> int:
        return self.devfn >> 3

    @property
    def function(self) -> int:
        return self.devfn & 7

    def tdi(self, function: int | None = None) -> InterfaceId:
        fn = self.function if function is None else function
        return InterfaceId.of(self.bus, self.device, fn, self.segment or None)

    def __str__(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.device:02x}.{self.function}"


@dataclass(frozen=True)
class ExpectedBar:
    """A memory BAR as the host sees it: index (= MMIO Range ID), base address, size."""

    index: int
    base: int
    size: int

    @classmethod
    def parse(cls, text: str) -> ExpectedBar:
        """'INDEX:BASE:SIZE', numbers in C notation (0x... hex)."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"bad BAR {text!r} (want INDEX:BASE:SIZE)")
        index, base, size = (int(p, 0) for p in parts)
        if size <= 0:
            raise ValueError(f"bad BAR size in {text!r}")
        return cls(index, base, size)
