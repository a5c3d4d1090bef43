"""The IDE model behind tdisp's IdeRegisterTarget protocol."""

from __future__ import annotations

from tdisp.ide_target import IdeRegisterTarget
from tdisp.idekm_messages import KpAckStatus
from tests.helpers.fakes import Cfg
from vdev.endpoint.function import TeeIoEndpoint
from vdev.endpoint.ide_registers import EndpointIdeTarget
from vdev.pci.ide_cap import IdeStreamState


def make() -> tuple[TeeIoEndpoint, Cfg, EndpointIdeTarget]:
    ep = TeeIoEndpoint()
    return ep, Cfg(ep), EndpointIdeTarget(ep.ide, ep.config)


def test_implements_the_protocol() -> None:
    _, _, target = make()
    assert isinstance(target, IdeRegisterTarget)


def test_port_info_carries_live_ide_registers() -> None:
    ep, cfg, target = make()
    assert target.port_info(1) is None
    info = target.port_info(0)
    assert info is not None
    assert (info.bus, info.dev_func, info.segment, info.max_port_index) == (1, 0, 0, 0)
    assert info.registers[0] == cfg.read(ep.ide.offset + 4)
    assert len(info.registers) == (ep.ide.size - 4) // 4
    cfg.write(ep.ide.stream(0).offset + 4, 7 << 24)
    info = target.port_info(0)
    assert info is not None
    assert info.registers[2 + 1] == 7 << 24  # IDE_CAP, IDE_CTL, SEL_CAP, SEL_CTL


def test_key_programming_drives_sel_sts() -> None:
    ep, cfg, target = make()
    stream = ep.ide.stream(0)
    assert not target.stream_configured(0, 7)
    cfg.write(stream.offset + 4, 7 << 24)  # pci_ide_stream_setup
    assert target.stream_configured(0, 7)
    assert not target.stream_configured(1, 7)
    assert target.program_key(0, 8, 0, True, 0, bytes(32), bytes(8)) is (
        KpAckStatus.UNSPECIFIED_FAILURE
    )
    for tx in (False, True):
        for sub in (0, 1, 2):
            assert target.program_key(0, 7, 0, tx, sub, bytes(32), bytes(8)) is (
                KpAckStatus.SUCCESS
            )
            assert target.key_set_go(0, 7, 0, tx, sub)
    assert not target.key_set_go(0, 7, 1, True, 0)  # key set 1 has no key
    cfg.write(stream.offset + 0x10, 0x0008 << 8 | 1)  # pci_ide_stream_setup: RID, V
    cfg.write(stream.offset + 4, (7 << 24) | 1)  # pci_ide_stream_enable
    assert cfg.read(stream.offset + 8) & 0xF == IdeStreamState.SECURE
    target.key_set_stop(0, 7, 0, False, 2)
    assert cfg.read(stream.offset + 8) & 0xF == IdeStreamState.INSECURE
