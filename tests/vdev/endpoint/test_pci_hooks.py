"""The register-change hooks TDI enforcement relies on (header BARs, IDE SEL_CTL, MSI-X)."""

from __future__ import annotations

from vdev.endpoint.function import TeeIoEndpoint
from vdev.pci.header import BAR_BASE
from vdev.pci.ide_cap import CTL_EN, SEL_CTL
from vdev.pci.msix_cap import MSIX_FLAGS_ENABLE
from vdev.pci.pcie_cap import DEVCTL_BCR_FLR


def test_bar_observer_sees_whole_bar_values() -> None:
    ep = TeeIoEndpoint()
    seen: list[tuple[int, int, int]] = []
    ep.header.bar_observers.append(lambda i, old, new: seen.append((i, old, new)))
    ep.config.write_int(BAR_BASE, 4, 0xFFFF_FFFF)  # sizing
    assert seen == [(0, 0x4, 0xFFFF_0004)]
    seen.clear()
    ep.config.write(BAR_BASE, (0x1_2345_0000 | 0x4).to_bytes(8, "little"))  # both dwords
    assert seen[0] == (0, 0xFFFF_0004, 0x1_2345_0004)
    assert all(old == new for _i, old, new in seen[1:])
    assert ep.header.bar_value(0) == 0x1_2345_0004


def test_flr_keeps_the_bar_mirror_without_notifying() -> None:
    """QEMU's emulated BAR copy survives a forwarded FLR and Linux restores
    nothing it reads back unchanged, so the model keeps the address too."""
    ep = TeeIoEndpoint()
    ep.config.write_int(BAR_BASE, 4, 0xFE00_0000)
    seen: list[object] = []
    ep.header.bar_observers.append(lambda *a: seen.append(a))
    ep.config.write_int(ep.pcie.offset + 8, 2, DEVCTL_BCR_FLR)
    assert seen == [] and ep.header.bar_value(0) == 0xFE00_0004
    ep.config.write_int(BAR_BASE, 4, 0xFE10_0000)
    assert seen == [(0, 0xFE00_0004, 0xFE10_0004)]


def test_sel_ctl_and_msix_control_observers() -> None:
    ep = TeeIoEndpoint()
    ctl: list[tuple[int, int]] = []
    msix: list[tuple[int, int]] = []
    ep.ide.control_observers.append(lambda s, old, new: ctl.append((old, new)))
    ep.msix.control_observers.append(lambda old, new: msix.append((old, new)))
    sel = ep.ide.offset + ep.ide.selective_block_offset(0) + SEL_CTL
    ep.config.write_int(sel, 4, (1 << 24) | CTL_EN)
    ep.config.write_int(sel, 4, 1 << 24)
    assert ctl == [(0, (1 << 24) | CTL_EN), ((1 << 24) | CTL_EN, 1 << 24)]
    control = ep.msix.offset + 2
    ep.config.write_int(control, 2, MSIX_FLAGS_ENABLE)
    vectors = ep.profile.msix_vectors - 1
    assert msix == [(vectors, vectors | MSIX_FLAGS_ENABLE)]


def test_endpoint_is_resetting_only_during_flr() -> None:
    ep = TeeIoEndpoint()
    during: list[bool] = []
    ep.header.command_observers.append(lambda old, new: during.append(ep.resetting))
    ep.config.write_int(0x04, 2, 0x2)
    ep.function_level_reset()
    assert during == [False, True] and not ep.resetting
