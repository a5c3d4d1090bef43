"""DEVICE_INTERFACE_REPORT structure (PCIe 6.2 §11.3.11): build, decode, render.

    INTERFACE_INFO u16 | reserved u16 | MSI_X_MESSAGE_CONTROL u16 | LNR_CONTROL u16
    | TPH_CONTROL u32 | MMIO_RANGE_COUNT u32 | MMIO_RANGE[count] (16 bytes each)
    | DEVICE_SPECIFIC_INFO_LEN u32 | DEVICE_SPECIFIC_INFO

`report_for_lock` derives the report the device hands out while the TDI is locked:

* MMIO ranges per BAR in 4 KiB pages, the pages holding the MSI-X table and PBA split
  out with the MSIX_TABLE / MSIX_PBA attributes; Range ID = BAR index.
* FIRST_PAGE = BAR base + page offset + MMIO_REPORTING_OFFSET (mod 2^64), §11.3.8.
* Without LOCK_MSIX the MSI-X table/PBA pages stay under host control, so we report
  them NON_TEE and MSI_X_MESSAGE_CONTROL as 0 (our reading of §11.3.11).
* INTERFACE_INFO.NO_UPDATE_AFTER_LOCK mirrors the NO_FW_UPDATE lock flag.
"""

from __future__ import annotations

from dataclasses import dataclass

from construct import (
    ConstructError,
    GreedyBytes,
    Int16ul,
    Int32ul,
    Prefixed,
    PrefixedArray,
    Struct,
    Terminated,
)

from tdisp.codes import PAGE_SIZE, InterfaceInfo, LockFlags, MmioAttr
from tdisp.device_interface import DeviceInterface, MmioBar
from tdisp.errors import MalformedMessage
from tdisp.messages import MmioRange, MmioRangeStruct

ReportStruct = Struct(
    "interface_info" / Int16ul,
    "reserved" / Int16ul,
    "msix_message_control" / Int16ul,
    "lnr_control" / Int16ul,
    "tph_control" / Int32ul,
    "mmio_ranges" / PrefixedArray(Int32ul, MmioRangeStruct),
    "device_specific_info" / Prefixed(Int32ul, GreedyBytes),
    Terminated,
)

_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class InterfaceReport:
    interface_info: int
    msix_message_control: int = 0
    lnr_control: int = 0
    tph_control: int = 0
    mmio_ranges: tuple[MmioRange, ...] = ()
    device_specific_info: bytes = b""
    reserved: int = 0

    def encode(self) -> bytes:
        out: bytes = ReportStruct.build(
            {
                "interface_info": self.interface_info,
                "reserved": self.reserved,
                "msix_message_control": self.msix_message_control,
                "lnr_control": self.lnr_control,
                "tph_control": self.tph_control,
                "mmio_ranges": [
                    {
                        "first_page": r.first_page,
                        "number_of_pages": r.number_of_pages,
                        "range_attributes": r.range_attributes,
                        "range_id": r.range_id,
                    }
                    for r in self.mmio_ranges
                ],
                "device_specific_info": self.device_specific_info,
            }
        )
        return out

    @classmethod
    def decode(cls, data: bytes) -> InterfaceReport:
        try:
            p = ReportStruct.parse(data)
        except ConstructError as exc:
            raise MalformedMessage(f"DEVICE_INTERFACE_REPORT: {exc}") from exc
        return cls(
            interface_info=int(p.interface_info),
            msix_message_control=int(p.msix_message_control),
            lnr_control=int(p.lnr_control),
            tph_control=int(p.tph_control),
            mmio_ranges=tuple(
                MmioRange(
                    int(r.first_page),
                    int(r.number_of_pages),
                    int(r.range_attributes),
                    int(r.range_id),
                )
                for r in p.mmio_ranges
            ),
            device_specific_info=bytes(p.device_specific_info),
            reserved=int(p.reserved),
        )

    def render(self) -> str:
        """Human-readable report, e.g. for `make run` summaries and logs."""
        lines = [
            f"INTERFACE_INFO 0x{self.interface_info:04x} "
            f"[{_flag_names(InterfaceInfo, self.interface_info)}]",
            f"MSI-X Message Control 0x{self.msix_message_control:04x}, "
            f"LNR Control 0x{self.lnr_control:04x}, TPH Control 0x{self.tph_control:08x}",
            f"{len(self.mmio_ranges)} MMIO range(s):",
        ]
        for n, r in enumerate(self.mmio_ranges, 1):
            end = (r.first_page + r.number_of_pages * PAGE_SIZE - 1) & _U64
            lines.append(
                f"  {n}. range ID {r.range_id}: 0x{r.first_page:016x}-0x{end:016x} "
                f"({r.number_of_pages} page{'s' if r.number_of_pages != 1 else ''}) "
                f"[{mmio_attributes(r.range_attributes)}]"
            )
        lines.append(f"device-specific info: {len(self.device_specific_info)} bytes")
        return "\n".join(lines)


def mmio_attributes(value: int) -> str:
    """An MMIO range's attributes by name ("MSIX_TABLE", "NON_TEE|UPDATABLE"); "TEE"
    for a range with none set (§11.3.11: a TEE range, neither MSI-X nor non-TEE)."""
    return _flag_names(MmioAttr, value) or "TEE"


def _flag_names(flags: type[InterfaceInfo] | type[MmioAttr], value: int) -> str:
    names = [str(f.name) for f in flags if value & f.value]
    rest = value & ~sum(f.value for f in flags)
    if rest:
        names.append(f"reserved 0x{rest:x}")
    return "|".join(names)


def _pages(span: tuple[int, int] | None) -> range:
    if span is None or span[1] <= 0:
        return range(0)
    offset, length = span
    return range(offset // PAGE_SIZE, (offset + length + PAGE_SIZE - 1) // PAGE_SIZE)


def bar_ranges(bar: MmioBar, mmio_offset: int, lock_msix: bool) -> list[MmioRange]:
    """One BAR as MMIO_RANGEs: consecutive pages with equal attributes coalesced."""
    npages = (bar.size + PAGE_SIZE - 1) // PAGE_SIZE
    base_attr = (MmioAttr.NON_TEE if bar.non_tee else 0) | (
        MmioAttr.UPDATABLE if bar.updatable else 0
    )
    table, pba = _pages(bar.msix_table), _pages(bar.msix_pba)
    attrs: list[int] = []
    for page in range(npages):
        a = int(base_attr)
        if page in table:
            a |= MmioAttr.MSIX_TABLE
        if page in pba:
            a |= MmioAttr.MSIX_PBA
        if (page in table or page in pba) and not lock_msix:
            a |= MmioAttr.NON_TEE
        attrs.append(a)
    ranges: list[MmioRange] = []
    start = 0
    for page in range(1, npages + 1):
        if page == npages or attrs[page] != attrs[start]:
            first = (bar.base + start * PAGE_SIZE + mmio_offset) & _U64
            ranges.append(MmioRange(first, page - start, attrs[start], bar.index))
            start = page
    return ranges


@dataclass(frozen=True)
class LockParams:
    flags: int
    default_stream_id: int
    mmio_reporting_offset: int
    bind_p2p_address_mask: int = 0


def report_for_lock(tdi: DeviceInterface, lock: LockParams) -> InterfaceReport:
    lock_msix = bool(lock.flags & LockFlags.LOCK_MSIX)
    info = int(tdi.interface_info) & ~InterfaceInfo.NO_UPDATE_AFTER_LOCK
    if lock.flags & LockFlags.NO_FW_UPDATE:
        info |= InterfaceInfo.NO_UPDATE_AFTER_LOCK
    ranges: list[MmioRange] = []
    for bar in tdi.current_bars():
        ranges += bar_ranges(bar, lock.mmio_reporting_offset, lock_msix)
    return InterfaceReport(
        interface_info=int(info),
        msix_message_control=tdi.msix_message_control if lock_msix else 0,
        lnr_control=tdi.lnr_control,
        tph_control=tdi.tph_control,
        mmio_ranges=tuple(ranges),
        device_specific_info=tdi.device_specific_info,
    )
