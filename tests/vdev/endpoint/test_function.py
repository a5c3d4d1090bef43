"""The endpoint behind VfioUserDevice: regions, IRQs, BAR0 registers, FLR."""

from __future__ import annotations

from tests.helpers.fakes import Cfg, FakeDma, FakeIrqSink
from tests.helpers.linux_doe import LinuxDoe
from vdev.doe.mailbox import CTRL_INT_EN, DOE_CTRL, DOE_STATUS, MailboxState
from vdev.endpoint.function import TeeIoEndpoint
from vdev.endpoint.registers import (
    ID_MAGIC,
    REG_DOORBELL,
    REG_ID,
    REG_INFO,
    REG_IRQ_COUNT,
    REG_RESET_COUNT,
    REG_SCRATCH0,
    REG_VERSION,
)
from vdev.pci.device_api import IrqIndex, RegionIndex, RegionType, VfioUserDevice
from vdev.pci.ide_cap import SLOTS, IdeStreamState
from vdev.pci.pcie_cap import DEVCTL_BCR_FLR
from vdev.profiles import DeviceProfile


def bar_read(ep: TeeIoEndpoint, off: int, size: int = 4) -> int:
    return int.from_bytes(ep.region_read(RegionIndex.BAR0, off, size), "little")


def bar_write(ep: TeeIoEndpoint, off: int, value: int, size: int = 4) -> None:
    ep.region_write(RegionIndex.BAR0, off, value.to_bytes(size, "little"))


def test_is_a_vfio_user_device(endpoint: TeeIoEndpoint) -> None:
    dev: VfioUserDevice = endpoint
    assert dev is endpoint


def test_regions() -> None:
    ep = TeeIoEndpoint(DeviceProfile(bar0_size=0x20000))
    sizes = {r.index: r.size for r in ep.regions()}
    # Index 9: the DOE batch region, a window per DOE capability at offset << 21.
    assert sizes == {0: 0x20000, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 4096, 8: 0,
                     9: 0x1000 << 21}
    types = {r.index: r.type for r in ep.regions() if r.type is not None}
    assert types == {9: RegionType(0x8000_0001, 0x2E)}


def test_irq_counts() -> None:
    ep = TeeIoEndpoint()
    assert [ep.irq_count(i) for i in IrqIndex] == [0, 0, 8, 0, 0]
    ep = TeeIoEndpoint(DeviceProfile(interrupt_pin=1, msix_vectors=32))
    assert [ep.irq_count(i) for i in IrqIndex] == [1, 0, 32, 0, 0]


def test_bar0_identification(endpoint: TeeIoEndpoint) -> None:
    assert endpoint.region_read(RegionIndex.BAR0, REG_ID, 4) == b"VDEV"
    assert bar_read(endpoint, REG_ID) == ID_MAGIC
    assert bar_read(endpoint, REG_VERSION) == 0x0001_0000
    assert bar_read(endpoint, REG_INFO) == 8
    bar_write(endpoint, REG_ID, 0)
    assert bar_read(endpoint, REG_ID) == ID_MAGIC


def test_scratch_registers_any_width(endpoint: TeeIoEndpoint) -> None:
    bar_write(endpoint, REG_SCRATCH0, 0x11223344)
    bar_write(endpoint, REG_SCRATCH0 + 4, 0xAABB, 2)
    bar_write(endpoint, REG_SCRATCH0 + 7, 0xCC, 1)
    assert bar_read(endpoint, REG_SCRATCH0, 8) == 0xCC00AABB_11223344
    assert bar_read(endpoint, REG_SCRATCH0 + 1, 2) == 0x2233


def test_doorbell_raises_msix_vector(endpoint: TeeIoEndpoint, irq: FakeIrqSink) -> None:
    bar_write(endpoint, REG_DOORBELL, 5)
    bar_write(endpoint, REG_DOORBELL, 0)
    bar_write(endpoint, REG_DOORBELL, 8)  # out of range: ignored
    bar_write(endpoint, REG_DOORBELL, 1, 1)  # partial write: ignored
    assert irq.triggered == [(IrqIndex.MSIX, 5), (IrqIndex.MSIX, 0)]
    assert bar_read(endpoint, REG_DOORBELL) == 0
    assert bar_read(endpoint, REG_IRQ_COUNT) == 2


def test_doorbell_without_client_is_harmless(endpoint: TeeIoEndpoint) -> None:
    bar_write(endpoint, REG_DOORBELL, 1)
    assert bar_read(endpoint, REG_IRQ_COUNT) == 1
    sink = FakeIrqSink()
    endpoint.attach(sink, FakeDma())
    endpoint.detach()
    bar_write(endpoint, REG_DOORBELL, 1)
    assert sink.triggered == []


def test_msix_table_reads_zero_and_pba_from_model(endpoint: TeeIoEndpoint) -> None:
    bar_write(endpoint, 0x1000, 0xFFFFFFFF)
    assert bar_read(endpoint, 0x1000, 8) == 0
    endpoint.msix.state.set_pending(3)
    endpoint.msix.state.set_pending(7)
    assert bar_read(endpoint, 0x2000, 8) == (1 << 3) | (1 << 7)
    assert bar_read(endpoint, 0x2000, 1) == 0x88
    bar_write(endpoint, 0x2000, 0)  # PBA is read-only
    assert bar_read(endpoint, 0x2000) == 0x88
    assert bar_read(endpoint, 0xFFFC) == 0
    assert len(endpoint.region_read(RegionIndex.BAR0, 0x1FFC, 0x10)) == 0x10


def prime_state(ep: TeeIoEndpoint, cfg: Cfg) -> LinuxDoe:
    cfg.write(0x04, 0x0006, 2)
    bar_write(ep, REG_SCRATCH0, 0xDEADBEEF)
    doe = LinuxDoe(cfg, ep.doe_cap.offset)
    doe.wr(DOE_CTRL, CTRL_INT_EN)
    doe.send(1, 0, [0x200])  # response pending
    stream = ep.ide.stream(0)
    for d, s in SLOTS:
        stream.program_key(0, d, s, bytes(32))
        stream.go(0, d, s)
    cfg.write(stream.offset + 0x10, 0x0008 << 8 | 1)  # RID association, V set
    cfg.write(stream.offset + 4, (9 << 24) | 1)
    assert stream.state is IdeStreamState.SECURE
    ep.msix.state.set_pending(1)
    return doe


def assert_reset_state(ep: TeeIoEndpoint, cfg: Cfg, doe: LinuxDoe) -> None:
    assert cfg.read(0x04, 2) == 0
    assert bar_read(ep, REG_SCRATCH0) == 0
    assert ep.doe.state is MailboxState.IDLE
    assert doe.rd(DOE_STATUS) == 0 and doe.rd(DOE_CTRL) == 0
    stream = ep.ide.stream(0)
    assert stream.state is IdeStreamState.INSECURE and not stream.keys_programmed(0)
    assert cfg.read(stream.offset + 4) == 0
    assert ep.msix.state.pending == 0
    assert bar_read(ep, REG_IRQ_COUNT) == 0
    # the DOE still works after reset
    doe.ctrl_bits = 0
    assert doe.exchange(1, 0, [0x200]).payload == [0x0100_0001]


def test_flr_through_devctl(endpoint: TeeIoEndpoint, cfg: Cfg) -> None:
    observed: list[str] = []
    endpoint.add_reset_observer(lambda: observed.append("reset"))
    doe = prime_state(endpoint, cfg)
    devctl = endpoint.pcie.offset + 8
    before = cfg.read(devctl, 2)
    cfg.write(devctl, 0x00A0, 2)  # change MPS: not an FLR
    assert observed == [] and cfg.read(devctl, 2) == 0x00A0
    cfg.write(devctl, cfg.read(devctl, 2) | DEVCTL_BCR_FLR, 2)
    assert observed == ["reset"]
    assert cfg.read(devctl, 2) == before  # Initiate FLR reads 0, DEVCTL back to reset value
    assert_reset_state(endpoint, cfg, doe)
    assert bar_read(endpoint, REG_RESET_COUNT) == 1


def test_flr_via_dword_write_covering_devsta(endpoint: TeeIoEndpoint, cfg: Cfg) -> None:
    # pcie_flr() uses a word write, but a dword write to DEVCTL/DEVSTA must work too
    devctl = endpoint.pcie.offset + 8
    bar_write(endpoint, REG_SCRATCH0, 1)
    cfg.write(devctl, DEVCTL_BCR_FLR | 0x000F_0000)
    assert bar_read(endpoint, REG_SCRATCH0) == 0


def test_device_reset_does_the_same(endpoint: TeeIoEndpoint, cfg: Cfg) -> None:
    observed: list[int] = []
    endpoint.add_reset_observer(lambda: observed.append(1))
    doe = prime_state(endpoint, cfg)
    endpoint.reset()
    assert observed == [1]
    assert_reset_state(endpoint, cfg, doe)


def test_flr_keeps_identity_and_layout(endpoint: TeeIoEndpoint, cfg: Cfg) -> None:
    image = endpoint.region_read(RegionIndex.CONFIG, 0, 4096)
    endpoint.reset()
    assert endpoint.region_read(RegionIndex.CONFIG, 0, 4096) == image


def test_pm_cap_state_rw(endpoint: TeeIoEndpoint, cfg: Cfg) -> None:
    pm = endpoint.pm.offset
    assert cfg.read(pm + 2, 2) & 0x7 == 3
    cfg.write(pm + 4, 0xFFFF, 2)
    assert cfg.read(pm + 4, 2) == 0x000B  # D3hot + No_Soft_Reset
    assert endpoint.pm.power_state == 3


def test_msix_control_write_is_kept(endpoint: TeeIoEndpoint, cfg: Cfg) -> None:
    msix = endpoint.msix.offset
    cfg.write(msix + 2, 0xFFFF, 2)
    assert cfg.read(msix + 2, 2) == 0xC007
    assert endpoint.msix.enabled and endpoint.msix.function_masked
