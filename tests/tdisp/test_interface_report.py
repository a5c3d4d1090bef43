"""DEVICE_INTERFACE_REPORT (PCIe 6.2 §11.3.11)."""

from __future__ import annotations

import pytest

from tdisp.codes import InterfaceInfo, LockFlags, MmioAttr
from tdisp.device_interface import DeviceInterface, InterfaceId, MmioBar
from tdisp.errors import MalformedMessage
from tdisp.interface_report import InterfaceReport, LockParams, bar_ranges, report_for_lock
from tdisp.messages import MmioRange

BAR0 = MmioBar(0, 0xFE00_0000, 0x1_0000, msix_table=(0x8000, 0x100), msix_pba=(0x9000, 8))


def test_bar_split_around_msix_pages_with_offset() -> None:
    off = 0x1000_0000_0000
    ranges = bar_ranges(BAR0, off, lock_msix=True)
    assert ranges == [
        MmioRange(0xFE00_0000 + off, 8, 0, 0),
        MmioRange(0xFE00_8000 + off, 1, MmioAttr.MSIX_TABLE, 0),
        MmioRange(0xFE00_9000 + off, 1, MmioAttr.MSIX_PBA, 0),
        MmioRange(0xFE00_A000 + off, 6, 0, 0),
    ]
    assert sum(r.number_of_pages for r in ranges) == 16


def test_msix_non_tee_without_lock_msix() -> None:
    ranges = bar_ranges(BAR0, 0, lock_msix=False)
    assert ranges[1].range_attributes == MmioAttr.MSIX_TABLE | MmioAttr.NON_TEE
    assert ranges[2].range_attributes == MmioAttr.MSIX_PBA | MmioAttr.NON_TEE


def test_table_and_pba_sharing_a_page() -> None:
    bar = MmioBar(1, 0x1000, 0x2000, msix_table=(0, 0x80), msix_pba=(0x800, 8))
    assert bar_ranges(bar, 0, lock_msix=True) == [
        MmioRange(0x1000, 1, MmioAttr.MSIX_TABLE | MmioAttr.MSIX_PBA, 1),
        MmioRange(0x2000, 1, 0, 1),
    ]


def test_offset_wraps_at_64_bits() -> None:
    bar = MmioBar(0, 0xFFFF_FFFF_FFFF_F000, 0x1000)
    assert bar_ranges(bar, 0x2000, True)[0].first_page == 0x1000


def test_report_for_lock_and_round_trip() -> None:
    tdi = DeviceInterface(
        InterfaceId(0x100),
        bars=[MmioBar(2, 0xFD00_0000, 0x2000, updatable=True), BAR0],
        interface_info=InterfaceInfo.DMA_WITHOUT_PASID | InterfaceInfo.ATS_SUPPORTED,
        msix_message_control=0x8003,
        lnr_control=0x1,
        tph_control=0x100,
        device_specific_info=b"dev-info",
    )
    locked = report_for_lock(tdi, LockParams(LockFlags.NO_FW_UPDATE | LockFlags.LOCK_MSIX, 1, 0))
    assert locked.interface_info == 0x1 | 0x2 | 0x8
    assert locked.msix_message_control == 0x8003
    assert [r.range_id for r in locked.mmio_ranges] == [0, 0, 0, 0, 2]  # sorted by BAR
    assert locked.mmio_ranges[-1].range_attributes == MmioAttr.UPDATABLE
    wire = locked.encode()
    assert len(wire) == 16 + 16 * 5 + 4 + 8
    assert InterfaceReport.decode(wire) == locked
    unlocked_msix = report_for_lock(tdi, LockParams(0, 1, 0))
    assert unlocked_msix.interface_info & InterfaceInfo.NO_UPDATE_AFTER_LOCK == 0
    assert unlocked_msix.msix_message_control == 0
    # tee-io-validator DeviceInterfaceReport 4.5.2 / 4.5.3
    assert locked.interface_info & 0xFFE0 == 0
    assert all(r.range_attributes & 0xFFF0 == 0 for r in locked.mmio_ranges)


def test_render_names_attributes() -> None:
    report = InterfaceReport(
        interface_info=0x3,
        mmio_ranges=(
            MmioRange(0xFE00_8000, 1, MmioAttr.MSIX_TABLE | MmioAttr.NON_TEE, 0),
            MmioRange(0xFE00_0000, 8, 0, 0),
        ),
    )
    text = report.render()
    assert "NO_UPDATE_AFTER_LOCK|DMA_WITHOUT_PASID" in text
    assert "0x00000000fe008000-0x00000000fe008fff (1 page) [MSIX_TABLE|NON_TEE]" in text
    assert "(8 pages) [TEE]" in text


def test_decode_rejects_truncated() -> None:
    wire = InterfaceReport(0, mmio_ranges=(MmioRange(0, 1, 0, 0),)).encode()
    with pytest.raises(MalformedMessage):
        InterfaceReport.decode(wire[:-1])
    with pytest.raises(MalformedMessage):
        InterfaceReport.decode(wire + b"\x00")


def test_bars_callable_is_read_at_lock_time() -> None:
    base = [0x1000]
    tdi = DeviceInterface(InterfaceId(1), bars=lambda: [MmioBar(0, base[0], 0x1000)])
    base[0] = 0x5000
    assert report_for_lock(tdi, LockParams(0, 0, 0)).mmio_ranges[0].first_page == 0x5000
