"""MSI-X capability, ID 0x11 (PCIe r6.0 §7.7.2), and the function's PBA model.

QEMU emulates this capability and the vector table entirely (docs/vfio-user-qemu.md
§7): guest writes are still forwarded to us, so we keep an honest
copy of Message Control, but delivery decisions belong to QEMU.  PBA reads
are forwarded, so the Pending Bit Array is answered from `MsixState`.
"""

from __future__ import annotations

from collections.abc import Callable

from vdev.pci.capability import Capability
from vdev.pci.register import Register

CAP_ID_MSIX = 0x11
MSIX_FLAGS_QSIZE = 0x07FF
MSIX_FLAGS_MASKALL = 1 << 14
MSIX_FLAGS_ENABLE = 1 << 15
MSIX_ENTRY_SIZE = 16
MSIX_MAX_VECTORS = 2048

ControlObserver = Callable[[int, int], None]
"""Called as ``observer(old_message_control, new_message_control)`` after every write."""


class MsixState:
    """Pending bits for each vector (the PBA, §7.7.2.5)."""

    def __init__(self, vectors: int) -> None:
        if not 1 <= vectors <= MSIX_MAX_VECTORS:
            raise ValueError(f"MSI-X vector count {vectors} not in 1..{MSIX_MAX_VECTORS}")
        self.vectors = vectors
        self.pending = 0

    @property
    def pba_size(self) -> int:
        """PBA bytes: one bit per vector, in whole QWORDs (§7.7.2.5)."""
        return ((self.vectors + 63) // 64) * 8

    def set_pending(self, vector: int, pending: bool = True) -> None:
        if not 0 <= vector < self.vectors:
            raise ValueError(f"MSI-X vector {vector} out of range")
        bit = 1 << vector
        self.pending = (self.pending | bit) if pending else (self.pending & ~bit)

    def read_pba(self, offset: int, count: int) -> bytes:
        raw = self.pending.to_bytes(self.pba_size, "little")
        chunk = raw[offset : offset + count]
        return chunk + bytes(count - len(chunk))

    def reset(self) -> None:
        self.pending = 0


class MsixCap(Capability):
    cap_id = CAP_ID_MSIX
    name = "MSI-X"

    def __init__(self, vectors: int, bir: int, table_offset: int, pba_offset: int) -> None:
        super().__init__()
        if table_offset & 0x7 or pba_offset & 0x7:
            raise ValueError("MSI-X table and PBA offsets must be QWORD aligned")
        self.state = MsixState(vectors)
        self.bir = bir
        self.table_offset = table_offset
        self.pba_offset = pba_offset
        self.control: Register | None = None
        self.control_observers: list[ControlObserver] = []
        self._last_control = vectors - 1

    @property
    def size(self) -> int:
        return 12

    @property
    def table_size(self) -> int:
        return self.state.vectors * MSIX_ENTRY_SIZE

    @property
    def enabled(self) -> bool:
        return self.control is not None and bool(self.control.value & MSIX_FLAGS_ENABLE)

    @property
    def function_masked(self) -> bool:
        return self.control is not None and bool(self.control.value & MSIX_FLAGS_MASKALL)

    def body_registers(self, base: int) -> list[Register]:
        self.control = Register(
            "MSIX_FLAGS",
            base + 2,
            2,
            reset=self.state.vectors - 1,
            rw=MSIX_FLAGS_MASKALL | MSIX_FLAGS_ENABLE,
            on_write=self._control_written,
        )
        return [
            self.control,
            Register("MSIX_TABLE", base + 4, 4, reset=self.table_offset | self.bir),
            Register("MSIX_PBA", base + 8, 4, reset=self.pba_offset | self.bir),
        ]

    def _control_written(self, _value: int, _be: int) -> None:
        assert self.control is not None
        old, self._last_control = self._last_control, self.control.value
        for observer in self.control_observers:
            observer(old, self._last_control)

    def flr(self) -> None:
        self.state.reset()
        if self.control is not None:
            self._last_control = self.control.value
