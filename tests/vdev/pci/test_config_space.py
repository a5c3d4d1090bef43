"""Config space layout as a guest (and QEMU) sees it."""

from __future__ import annotations

import pytest

from tests.helpers.fakes import Cfg
from vdev.endpoint.function import TeeIoEndpoint
from vdev.pci.capability import Capability, ExtCapability
from vdev.pci.pcie_cap import DEVCAP_FLR, DEVCAP_TEE
from vdev.profiles import DeviceProfile

PCI_CAP_ID_PM = 0x01
PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11
PCI_EXT_CAP_ID_DOE = 0x2E
PCI_EXT_CAP_ID_IDE = 0x30


def walk_caps(cfg: Cfg) -> list[tuple[int, int]]:
    """Like pci_find_capability: Status.CAP_LIST, then 0x34 and next pointers."""
    assert cfg.read(0x06, 2) & 0x10
    caps = []
    pos = cfg.read(0x34, 1)
    ttl = 48
    while pos and ttl:
        assert pos >= 0x40 and pos % 4 == 0
        caps.append((cfg.read(pos, 1), pos))
        pos = cfg.read(pos + 1, 1) & ~3
        ttl -= 1
    assert ttl
    return caps


def walk_ext_caps(cfg: Cfg) -> list[tuple[int, int, int]]:
    """Like pci_find_next_ext_capability: from 0x100 following next[31:20]."""
    out = []
    pos = 0x100
    while pos:
        header = cfg.read(pos)
        assert header != 0
        out.append((header & 0xFFFF, (header >> 16) & 0xF, pos))
        nxt = header >> 20
        assert nxt == 0 or nxt >= pos + 8, "QEMU needs ext caps >= 8 bytes apart"
        pos = nxt
    return out


def test_header_identity_from_profile() -> None:
    profile = DeviceProfile(vendor_id=0x1234, device_id=0x5678, class_code=0xFF0000, revision=7)
    cfg = Cfg(TeeIoEndpoint(profile))
    assert cfg.read(0x00) == 0x5678_1234
    assert cfg.read(0x08) == 0xFF00_0007
    assert cfg.read(0x0E, 1) == 0x00  # type 0, single function
    assert cfg.read(0x2C, 2) == profile.subsystem_vendor_id
    assert cfg.read(0x2E, 2) == profile.subsystem_id
    assert cfg.read(0x3D, 1) == 0  # no INTx by default


def test_default_ids_are_the_documented_placeholders(cfg: Cfg) -> None:
    assert cfg.read(0x00, 2) == 0x1DED
    assert cfg.read(0x02, 2) == 0x7E10
    assert cfg.read(0x09, 3) == 0x120000


def test_standard_capability_chain(cfg: Cfg) -> None:
    caps = dict(walk_caps(cfg))
    assert set(caps) == {PCI_CAP_ID_PM, PCI_CAP_ID_EXP, PCI_CAP_ID_MSIX}
    exp = caps[PCI_CAP_ID_EXP]
    flags = cfg.read(exp + 2, 2)
    assert flags & 0xF == 2  # capability version 2
    assert (flags >> 4) & 0xF == 0  # PCI_EXP_TYPE_ENDPOINT
    devcap = cfg.read(exp + 4)
    assert devcap & DEVCAP_TEE == 0x4000_0000  # PCI_EXP_DEVCAP_TEE
    assert devcap & DEVCAP_FLR == 0x1000_0000  # PCI_EXP_DEVCAP_FLR
    msix = caps[PCI_CAP_ID_MSIX]
    assert cfg.read(msix + 2, 2) & 0x7FF == 8 - 1
    assert cfg.read(msix + 4) == 0x1000  # table at BAR0 + 0x1000, BIR 0
    assert cfg.read(msix + 8) == 0x2000  # PBA at the next page, BIR 0


def test_extended_capability_chain(cfg: Cfg) -> None:
    assert cfg.read(0x100) != 0
    ext = walk_ext_caps(cfg)
    assert [(i, v) for i, v, _ in ext] == [(PCI_EXT_CAP_ID_DOE, 2), (PCI_EXT_CAP_ID_IDE, 1)]
    ide = ext[1][2]
    ide_cap = cfg.read(ide + 4)
    assert ide_cap & 0x2  # PCI_IDE_CAP_SELECTIVE
    assert not ide_cap & 0x1  # no Link IDE by default
    assert (ide_cap >> 16) & 0xFF == 0  # 1 selective stream
    assert ide_cap & (1 << 6)  # IDE_KM supported


def test_capabilities_do_not_overlap_and_fit(endpoint: TeeIoEndpoint) -> None:
    caps: list[Capability | ExtCapability] = [
        *endpoint.config.capabilities,
        *endpoint.config.ext_capabilities,
    ]
    spans = sorted((c.offset, c.offset + c.size) for c in caps)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start
    assert spans[-1][1] <= 4096


def test_find_helpers_agree_with_walk(endpoint: TeeIoEndpoint, cfg: Cfg) -> None:
    assert endpoint.config.find_capability(PCI_CAP_ID_EXP) == endpoint.pcie.offset
    assert endpoint.config.find_ext_capability(PCI_EXT_CAP_ID_IDE) == endpoint.ide.offset
    assert endpoint.config.find_capability(0x05) is None
    assert endpoint.config.find_ext_capability(0x0001) is None


def test_bar0_sizing_64bit() -> None:
    ep = TeeIoEndpoint(DeviceProfile(bar0_size=0x10000))
    cfg = Cfg(ep)
    assert cfg.read(0x10) == 0x4  # memory, 64-bit, non-prefetchable
    cfg.write(0x10, 0xFFFFFFFF)
    cfg.write(0x14, 0xFFFFFFFF)
    assert cfg.read(0x10) == 0xFFFF0004
    assert cfg.read(0x14) == 0xFFFFFFFF
    cfg.write(0x10, 0xFEB00000)
    cfg.write(0x14, 0x00000001)
    assert cfg.read(0x10) == 0xFEB00004
    assert cfg.read(0x14) == 0x1
    for bar in range(2, 6):
        cfg.write(0x10 + 4 * bar, 0xFFFFFFFF)
        assert cfg.read(0x10 + 4 * bar) == 0


def test_rom_bar_reads_zero(cfg: Cfg) -> None:
    cfg.write(0x30, 0xFFFFF800)
    assert cfg.read(0x30) == 0
    cfg.write(0x30, 0xFFFFFFFF)
    assert cfg.read(0x30) == 0


def test_command_register_is_read_write(endpoint: TeeIoEndpoint, cfg: Cfg) -> None:
    seen: list[tuple[int, int]] = []
    endpoint.header.command_observers.append(lambda old, new: seen.append((old, new)))
    cfg.write(0x04, 0x0406, 2)  # memory, bus master, INTx disable
    assert cfg.read(0x04, 2) == 0x0406
    cfg.write(0x04, 0xFFFF, 2)
    assert cfg.read(0x04, 2) == 0x0546  # only implemented bits stick, I/O space RO 0
    assert seen == [(0, 0x0406), (0x0406, 0x0546)]
    endpoint.function_level_reset()
    assert seen[-1] == (0x0546, 0)


def test_status_cap_list_is_read_only_and_errors_w1c(endpoint: TeeIoEndpoint, cfg: Cfg) -> None:
    endpoint.header.status.value |= 1 << 13  # pretend Received Master Abort
    cfg.write(0x06, 0xFFFF & ~(1 << 13), 2)
    assert cfg.read(0x06, 2) == 0x10 | (1 << 13)
    cfg.write(0x06, 1 << 13, 2)
    assert cfg.read(0x06, 2) == 0x10
    # a dword write at 0x04 covering Command and Status
    cfg.write(0x04, 0xFFFF_0002)
    assert cfg.read(0x04) == 0x0010_0002


def test_header_read_only_fields_ignore_writes(cfg: Cfg) -> None:
    before = bytes(cfg.ep.region_read(7, 0, 0x40))
    for off in (0x00, 0x08, 0x2C, 0x34):
        cfg.write(off, 0xFFFFFFFF)
    after = bytes(cfg.ep.region_read(7, 0, 0x40))
    for off in (0x00, 0x08, 0x2C, 0x34):
        assert after[off : off + 4] == before[off : off + 4]


def test_interrupt_line_rw_and_pin_from_profile() -> None:
    cfg = Cfg(TeeIoEndpoint(DeviceProfile(interrupt_pin=1)))
    cfg.write(0x3C, 0xFFFF, 2)
    assert cfg.read(0x3C, 2) == 0x01FF


def test_whole_space_readable_at_every_size(cfg: Cfg) -> None:
    image = cfg.ep.region_read(7, 0, 4096)
    assert len(image) == 4096
    for size in (1, 2, 4):
        for off in range(0, 4096, 61):
            if off + size <= 4096:
                assert cfg.ep.region_read(7, off, size) == image[off : off + size]


@pytest.mark.parametrize("streams,assoc,link", [(1, 1, 0), (3, 2, 0), (2, 0, 2), (4, 15, 1)])
def test_ide_layout_matches_linux_formula(streams: int, assoc: int, link: int) -> None:
    ep = TeeIoEndpoint(
        DeviceProfile(
            ide_selective_streams=streams, ide_address_associations=assoc, ide_link_streams=link
        )
    )
    cfg = Cfg(ep)
    ide = ep.config.find_ext_capability(PCI_EXT_CAP_ID_IDE)
    assert ide is not None
    cap = cfg.read(ide + 4)
    nr_link = 1 + ((cap >> 13) & 7) if cap & 1 else 0
    nr_sel = 1 + ((cap >> 16) & 0xFF)
    assert (nr_link, nr_sel) == (link, streams)
    for i in range(nr_sel):
        # drivers/pci/ide.c: block i at ide_cap + 0x0C + nr_link*8 + i*(20 + 12*nr_assoc)
        block = ide + 0x0C + nr_link * 8 + i * (20 + 12 * assoc)
        assert cfg.read(block) & 0xF == assoc  # SEL_CAP association count
        assert ep.ide.stream(i).offset == block
        # the kernel parks non-enabled streams on reserved Stream ID 255
        cfg.write(block + 4, 255 << 24)
        assert cfg.read(block + 4) >> 24 == 255
        assert ep.ide.stream(i).stream_id == 255
        assert cfg.read(block + 8) & 0xF == 0  # INSECURE
        cfg.write(block + 0x0C, 0xFFFFFFFF)
        assert cfg.read(block + 0x0C) == 0x00FFFF00
        cfg.write(block + 0x10, 0xFFFFFFFF)
        assert cfg.read(block + 0x10) == 0xFFFFFF01
        for k in range(assoc):
            cfg.write(block + 20 + 12 * k, 0xFFFFFFFF)
            assert cfg.read(block + 20 + 12 * k) == 0xFFFFFF01
    for i in range(nr_link):
        cfg.write(ide + 0x0C + 8 * i, 255 << 24)
        assert cfg.read(ide + 0x0C + 8 * i) >> 24 == 255
    end = ide + 0x0C + nr_link * 8 + nr_sel * (20 + 12 * assoc)
    assert ep.ide.offset + ep.ide.size == end
