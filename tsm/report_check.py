"""Checking a DEVICE_INTERFACE_REPORT against what the host knows of the TDI's BARs.

PCIe 6.2 §11.3.11: MMIO_RANGE.FIRST_PAGE is the BAR address plus the
MMIO_REPORTING_OFFSET from LOCK_INTERFACE_REQUEST (§11.3.8), in 4 KiB pages, Range ID
names the BAR.  The TSM must refuse to START a TDI whose report disagrees with the BARs
the host assigned (otherwise a device could claim other MMIO as TEE memory), so:

  * INTERFACE_INFO bits 15:5 and range attribute bits 15:4 are reserved (must be 0);
  * every range's ID is a BAR the host knows;
  * each BAR's ranges, in order, tile [base + offset, base + offset + size) rounded up
    to whole pages, without gaps or overlaps.

`check_report` returns None when the report is acceptable, else the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from tdisp.codes import PAGE_SIZE
from tdisp.interface_report import InterfaceReport
from tsm.device_ref import ExpectedBar

_U64 = (1 << 64) - 1
INTERFACE_INFO_RESERVED = 0xFFE0
RANGE_ATTR_RESERVED = 0xFFF0


def check_report(
    report: InterfaceReport, expected: Sequence[ExpectedBar], mmio_offset: int
) -> str | None:
    if report.interface_info & INTERFACE_INFO_RESERVED:
        return f"INTERFACE_INFO 0x{report.interface_info:04x} sets reserved bits"
    known = {b.index: b for b in expected}
    by_id: dict[int, list[tuple[int, int]]] = {}
    for r in report.mmio_ranges:
        if r.range_attributes & RANGE_ATTR_RESERVED:
            return f"range id {r.range_id}: reserved attribute bits 0x{r.range_attributes:04x}"
        if r.range_id not in known:
            return (
                f"range id {r.range_id} at 0x{r.first_page:x} is not a BAR the host knows "
                f"(expected BARs {sorted(known)})"
            )
        if r.first_page % PAGE_SIZE:
            return f"range id {r.range_id}: FIRST_PAGE 0x{r.first_page:x} not page aligned"
        by_id.setdefault(r.range_id, []).append((r.first_page, r.number_of_pages))
    for bar in sorted(expected, key=lambda b: b.index):
        start = (bar.base + mmio_offset) & _U64
        pages = (bar.size + PAGE_SIZE - 1) // PAGE_SIZE
        want = f"0x{start:x}-0x{(start + pages * PAGE_SIZE - 1) & _U64:x} ({pages} pages)"
        ranges = by_id.get(bar.index)
        if not ranges:
            return f"BAR{bar.index}: missing from the report, expected {want}"
        pos, total = start, 0
        for first, n in ranges:
            if first != pos:
                return (
                    f"BAR{bar.index}: range at 0x{first:x} where 0x{pos:x} was expected "
                    f"(expected {want})"
                )
            pos = (pos + n * PAGE_SIZE) & _U64
            total += n
        if total != pages:
            got_end = (start + total * PAGE_SIZE - 1) & _U64
            return (
                f"BAR{bar.index}: report covers 0x{start:x}-0x{got_end:x} ({total} pages), "
                f"expected {want}"
            )
    return None
