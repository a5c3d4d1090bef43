"""4 KiB PCI Express configuration space composed from a header and capability objects.

Layout rules enforced here (docs/vfio-user-qemu.md §6.2, §6.3, PCIe r6.0 §7.5.3, §7.6.3):
- legacy capabilities live in 0x40..0xFF, DW aligned, linked from 0x34;
- extended capabilities start at 0x100 (so the DW at 0x100 is nonzero),
  DW aligned, each at least 8 bytes from the next (QEMU asserts this), the
  last one with next pointer 0;
- the region is exactly 4096 bytes (with 256 QEMU drops PCIe).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vdev.pci.capability import Capability, ExtCapability
from vdev.pci.header import Type0Header
from vdev.pci.register import Register, RegisterFile

CONFIG_SPACE_SIZE = 4096
LEGACY_CAP_START = 0x40
LEGACY_END = 0x100
EXT_CAP_START = 0x100
EXT_CAP_MIN_SPACING = 8

ResetObserver = Callable[[], None]


def _align(value: int, to: int) -> int:
    return (value + to - 1) & ~(to - 1)


class ConfigSpace:
    """The function's configuration space; `read`/`write` take any offset and length."""

    def __init__(
        self,
        header: Type0Header,
        capabilities: Sequence[Capability],
        ext_capabilities: Sequence[ExtCapability],
    ) -> None:
        self.header = header
        self.capabilities = tuple(capabilities)
        self.ext_capabilities = tuple(ext_capabilities)
        self.file = RegisterFile(CONFIG_SPACE_SIZE, "config")
        self._layout_legacy()
        self._layout_extended()

    def _layout_legacy(self) -> None:
        offsets: list[int] = []
        pos = LEGACY_CAP_START
        for cap in self.capabilities:
            offsets.append(pos)
            pos = _align(pos + cap.size, 4)
        if pos > LEGACY_END:
            raise ValueError("legacy capabilities do not fit below 0x100")
        first = offsets[0] if offsets else 0
        self.file.add_all(self.header.registers(cap_pointer=first))
        for i, cap in enumerate(self.capabilities):
            base = offsets[i]
            nxt = offsets[i + 1] if i + 1 < len(offsets) else 0
            self.file.add(Register(f"{cap.name}_ID", base, 1, reset=cap.cap_id))
            self.file.add(Register(f"{cap.name}_NEXT", base + 1, 1, reset=nxt))
            self.file.add_all(cap.place(base))

    def _layout_extended(self) -> None:
        offsets: list[int] = []
        pos = EXT_CAP_START
        for cap in self.ext_capabilities:
            if cap.size < EXT_CAP_MIN_SPACING:
                raise ValueError(f"extended capability {cap.name} smaller than 8 bytes")
            offsets.append(pos)
            pos = _align(pos + cap.size, 8)
        if pos > CONFIG_SPACE_SIZE:
            raise ValueError("extended capabilities do not fit in 4 KiB")
        for i, cap in enumerate(self.ext_capabilities):
            base = offsets[i]
            nxt = offsets[i + 1] if i + 1 < len(offsets) else 0
            header = cap.cap_id | (cap.version << 16) | (nxt << 20)
            self.file.add(Register(f"{cap.name}_HEADER", base, 4, reset=header))
            self.file.add_all(cap.place(base))
        if not self.ext_capabilities:
            # A zero DW at 0x100 makes QEMU treat extended config space as absent;
            # a header with ID 0xFFFF... is not valid either, so require a capability.
            raise ValueError("an endpoint needs at least one extended capability")

    # ---- access ----------------------------------------------------------

    def read(self, offset: int, count: int) -> bytes:
        return self.file.read(offset, count)

    def write(self, offset: int, data: bytes) -> None:
        self.file.write(offset, data)

    def read_int(self, offset: int, size: int) -> int:
        return self.file.read_int(offset, size)

    def write_int(self, offset: int, size: int, value: int) -> None:
        self.file.write_int(offset, size, value)

    # ---- reset -----------------------------------------------------------

    def reset(self) -> None:
        """Function-level reset of configuration state (PCIe r6.0 §6.6.2).

        Every register returns to its reset value except sticky bits; then
        each capability resets its model state (DOE aborted, IDE keys dropped).
        """
        self.file.reset(keep_sticky=True)
        self.header.flr()
        for cap in self.capabilities:
            cap.flr()
        for ext in self.ext_capabilities:
            ext.flr()

    # ---- discovery helpers (what a guest walking the chain would find) ------

    def find_capability(self, cap_id: int) -> int | None:
        pos = self.read_int(0x34, 1) & ~0x3
        seen: set[int] = set()
        while pos and pos not in seen:
            seen.add(pos)
            if self.read_int(pos, 1) == cap_id:
                return pos
            pos = self.read_int(pos + 1, 1) & ~0x3
        return None

    def find_ext_capability(self, cap_id: int) -> int | None:
        pos = EXT_CAP_START
        seen: set[int] = set()
        while pos and pos not in seen:
            seen.add(pos)
            header = self.read_int(pos, 4)
            if header & 0xFFFF == cap_id:
                return pos
            pos = (header >> 20) & ~0x3
        return None
