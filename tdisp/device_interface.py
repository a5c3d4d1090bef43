"""How the device model describes a TDI to the TDISP responder (PCIe 6.2 §11.2, §11.3.11).

* `InterfaceId`: INTERFACE_ID.FUNCTION_ID = Requester ID (bus/dev/fn) in bits 15:0,
  segment in 23:16, segment-valid in bit 24; the other 8 bytes are reserved.
* `MmioBar`: one memory BAR as currently programmed: index (reported as Range ID),
  base, size, and where the MSI-X table / PBA live inside it (byte offset, length).
  `non_tee` / `updatable` mark the whole BAR with those range attributes.
* `DeviceInterface`: the TDI: id, BARs (a fixed list or a callable the responder asks
  at LOCK time, so BARs re-programmed by the host before LOCK are reported correctly),
  INTERFACE_INFO DMA/ATS bits, the MSI-X Message Control, LNR and TPH control values,
  device-specific report bytes, and NUM_REQ_THIS / NUM_REQ_ALL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tdisp.codes import InterfaceInfo

FUNCTION_ID_RID_MASK = 0x0000_FFFF
FUNCTION_ID_SEGMENT_SHIFT = 16
FUNCTION_ID_SEGMENT_VALID = 0x0100_0000


@dataclass(frozen=True, order=True)
class InterfaceId:
    function_id: int
    reserved: int = 0  # the 8 reserved bytes; echoed, not interpreted

    @classmethod
    def of(cls, bus: int, device: int, function: int, segment: int | None = None) -> InterfaceId:
        rid = (bus << 8) | (device << 3) | function
        fid = rid
        if segment is not None:
            fid |= (segment << FUNCTION_ID_SEGMENT_SHIFT) | FUNCTION_ID_SEGMENT_VALID
        return cls(fid)

    @property
    def requester_id(self) -> int:
        return self.function_id & FUNCTION_ID_RID_MASK

    @property
    def segment(self) -> int | None:
        if not self.function_id & FUNCTION_ID_SEGMENT_VALID:
            return None
        return (self.function_id >> FUNCTION_ID_SEGMENT_SHIFT) & 0xFF

    def matches(self, other: InterfaceId) -> bool:
        # Reserved bytes are ignored by the receiver (§11.3: reserved fields).
        return self.function_id == other.function_id

    def __str__(self) -> str:
        rid = self.requester_id
        seg = self.segment
        bdf = f"{rid >> 8:02x}:{(rid >> 3) & 0x1F:02x}.{rid & 7}"
        return f"{seg:04x}:{bdf}" if seg is not None else bdf


@dataclass(frozen=True)
class MmioBar:
    index: int
    base: int
    size: int
    msix_table: tuple[int, int] | None = None  # (offset in BAR, length in bytes)
    msix_pba: tuple[int, int] | None = None
    non_tee: bool = False
    updatable: bool = False


@dataclass
class DeviceInterface:
    interface_id: InterfaceId
    bars: Sequence[MmioBar] | Callable[[], Sequence[MmioBar]] = ()
    interface_info: InterfaceInfo = InterfaceInfo.DMA_WITHOUT_PASID
    msix_message_control: int = 0
    lnr_control: int = 0
    tph_control: int = 0
    device_specific_info: bytes = b""
    num_req_this: int = 1
    num_req_all: int = 1

    def current_bars(self) -> list[MmioBar]:
        bars = self.bars() if callable(self.bars) else self.bars
        return sorted(bars, key=lambda b: b.index)
