"""TDI enforcement: configuration changes while CONFIG_LOCKED / RUN (PCIe 6.2 §11.2.4)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from spdm.errors import PeerError
from tdisp.codes import LockFlags, TdiState
from tdisp.errors import TdispErrorResponse
from tests.helpers.secure_host import BAR0_ADDRESS, STREAM_ID, SecureHost, sel_offset, tdi_state
from tests.vdev.endpoint.test_secure_mailbox import make_host
from vdev.pci.header import BAR_BASE, CMD_MASTER, CMD_MEMORY, COMMAND
from vdev.pci.ide_cap import CTL_EN, SEL_CTL, IdeStreamState
from vdev.pci.msix_cap import MSIX_FLAGS_ENABLE
from vdev.pci.pcie_cap import DEVCTL_BCR_FLR


def locked(state_dir: Path, **profile: object) -> SecureHost:
    host = make_host(state_dir, **profile)
    host.authenticate()
    host.open_session()
    host.secure_stream()
    return host


@pytest.fixture
def lock_only(state_dir: Path) -> SecureHost:
    host = locked(state_dir)
    assert host.tdisp_connect(start=False).state == TdiState.CONFIG_LOCKED
    return host


@pytest.fixture
def running(state_dir: Path) -> SecureHost:
    host = locked(state_dir)
    assert host.tdisp_connect().state == TdiState.RUN
    return host


def msix_control_offset(host: SecureHost) -> int:
    return host.device.msix.offset + 2


def devctl_offset(host: SecureHost) -> int:
    return host.device.pcie.offset + 8


def test_bar_write_while_locked_is_an_error(
    lock_only: SecureHost, caplog: pytest.LogCaptureFixture
) -> None:
    host = lock_only
    caplog.set_level(logging.WARNING, "vdev.endpoint.tdi_enforcement")
    host.cfg.write(BAR_BASE, 4, BAR0_ADDRESS & 0xFFFF_FFFF)  # same value: no change
    assert tdi_state(host.device) == TdiState.CONFIG_LOCKED
    host.cfg.write(BAR_BASE, 4, 0xFE00_0000)
    assert tdi_state(host.device) == TdiState.ERROR
    assert "BAR0 changed" in caplog.text and "-> ERROR" in caplog.text


def test_bar_sizing_while_locked_is_an_error(lock_only: SecureHost) -> None:
    lock_only.cfg.write(BAR_BASE + 4, 4, 0xFFFF_FFFF)
    assert tdi_state(lock_only.device) == TdiState.ERROR


def test_bar_writes_while_unlocked_are_fine(state_dir: Path) -> None:
    host = make_host(state_dir)
    host.cfg.write(BAR_BASE, 4, 0xFFFF_FFFF)
    host.program_bar0()
    assert tdi_state(host.device) == TdiState.CONFIG_UNLOCKED


def test_memory_space_enable_change_in_run_is_an_error(running: SecureHost) -> None:
    host = running
    host.cfg.write(COMMAND, 2, host.cfg.read(COMMAND, 2) & ~CMD_MASTER)  # BME: not watched
    assert tdi_state(host.device) == TdiState.RUN
    host.cfg.write(COMMAND, 2, host.cfg.read(COMMAND, 2) & ~CMD_MEMORY)
    assert tdi_state(host.device) == TdiState.ERROR


def test_flr_in_run_unlocks_and_keeps_the_session(running: SecureHost) -> None:
    host = running
    host.cfg.write(devctl_offset(host), 2, DEVCTL_BCR_FLR)
    assert tdi_state(host.device) == TdiState.CONFIG_UNLOCKED
    states = [entry.new for entry in host.device.tdi.history]
    assert states[-1] == TdiState.CONFIG_UNLOCKED
    assert TdiState.ERROR not in states  # the reset's own register changes are not violations
    assert host.session_id is not None
    host.run(host.requester.heartbeat(host.session_id))  # the DSM session survives FLR


def test_flr_can_end_sessions(state_dir: Path) -> None:
    host = locked(state_dir, flr_ends_spdm_sessions=True)
    host.tdisp_connect()
    host.cfg.write(devctl_offset(host), 2, DEVCTL_BCR_FLR)
    assert tdi_state(host.device) == TdiState.CONFIG_UNLOCKED
    assert not host.device.responder.sessions
    assert host.session_id is not None
    with pytest.raises(PeerError):
        host.run(host.requester.heartbeat(host.session_id))


def test_vfio_device_reset_in_run_unlocks(running: SecureHost) -> None:
    running.device.reset()
    assert tdi_state(running.device) == TdiState.CONFIG_UNLOCKED


def test_ide_stream_disable_in_run_is_an_error(running: SecureHost) -> None:
    host = running
    host.cfg.write(sel_offset(host.device, SEL_CTL), 4, STREAM_ID << 24)  # EN cleared
    assert tdi_state(host.device) == TdiState.ERROR
    assert host.stream_status() == IdeStreamState.INSECURE


def test_ide_sel_ctl_change_in_run_is_an_error(running: SecureHost) -> None:
    host = running
    host.cfg.write(sel_offset(host.device, SEL_CTL), 4, (STREAM_ID << 24) | CTL_EN | (1 << 19))
    assert tdi_state(host.device) == TdiState.ERROR


def test_ide_sel_ctl_rewrite_of_the_same_value_is_fine(running: SecureHost) -> None:
    running.enable_stream()
    assert tdi_state(running.device) == TdiState.RUN


def test_msix_enable_change_with_lock_msix_is_an_error(running: SecureHost) -> None:
    host = running
    off = msix_control_offset(host)
    host.cfg.write(off, 2, host.cfg.read(off, 2) | MSIX_FLAGS_ENABLE)
    assert tdi_state(host.device) == TdiState.ERROR


def test_msix_changes_without_lock_msix_are_fine(state_dir: Path) -> None:
    host = locked(state_dir)
    host.tdisp_connect(flags=int(LockFlags.NO_FW_UPDATE))
    off = msix_control_offset(host)
    host.cfg.write(off, 2, host.cfg.read(off, 2) | MSIX_FLAGS_ENABLE)
    assert tdi_state(host.device) == TdiState.RUN


def test_msix_table_write_with_lock_msix_is_an_error(running: SecureHost) -> None:
    from vdev.pci.device_api import RegionIndex

    device = running.device
    device.region_write(RegionIndex.BAR0, device.msix.table_offset, b"\x00\x10\xe0\xfe")
    assert tdi_state(device) == TdiState.ERROR


def test_interface_report_tracks_the_programmed_bar(state_dir: Path) -> None:
    host = locked(state_dir)
    host.program_bar0(0xC000_0000)
    conn = host.tdisp_connect()
    assert min(r.first_page for r in conn.report.mmio_ranges) == 0xC000_0000


def test_lock_after_flr_needs_the_ide_stream_again(running: SecureHost) -> None:
    host = running
    host.cfg.write(devctl_offset(host), 2, DEVCTL_BCR_FLR)
    assert host.stream_status() == IdeStreamState.INSECURE  # FLR reset the stream
    with pytest.raises(TdispErrorResponse, match="INVALID_REQUEST"):
        host.tdisp_connect()
    host.secure_stream()
    assert host.tdisp_connect().state == TdiState.RUN
