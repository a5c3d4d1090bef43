"""SPDM + IDE_KM + TDISP through the device model's own DOE mailbox (Linux doe.c sequence)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from spdm.codes import ReqCap
from spdm.requester import Outgoing, Requester, RequesterConfig
from tdisp.codes import MmioAttr, TdiState
from tests.helpers.secure_host import BAR0_ADDRESS, ConfigPort, SecureHost, tdi_state
from vdev.doe.requester import DoeRequester
from vdev.endpoint.tee_device import TeeDevice
from vdev.pci.ide_cap import IdeStreamState
from vdev.profiles import DeviceProfile

DOE_CAP = 0x100


def make_host(state_dir: Path, **profile: object) -> SecureHost:
    return mailbox_host(TeeDevice(DeviceProfile(**profile), state_dir=state_dir))  # type: ignore[arg-type]


def mailbox_host(device: TeeDevice) -> SecureHost:
    cfg = ConfigPort.of_device(device)
    doe = DoeRequester(lambda off: cfg.read(off, 4), lambda off, v: cfg.write(off, 4, v), DOE_CAP)

    def transport(out: Outgoing) -> bytes:
        return doe.exchange_bytes(out.doe_type, out.data)

    return SecureHost(device, cfg, transport, device.identity.root)


def test_full_flow_over_the_mailbox(state_dir: Path) -> None:
    device = TeeDevice(state_dir=state_dir)
    host = mailbox_host(device)
    host.authenticate()
    sid = host.open_session()
    host.run(host.requester.heartbeat(sid))
    host.run(host.requester.key_update(sid))
    host.program_bar0()
    host.setup_stream()
    keys = host.ide_keys()
    assert keys.query.bus == 1 and keys.query.dev_func == 0
    assert host.stream_status() == IdeStreamState.INSECURE  # keys active, stream not enabled
    host.enable_stream()
    assert host.stream_status() == IdeStreamState.SECURE
    conn = host.tdisp_connect()
    assert conn.state == TdiState.RUN
    msix = MmioAttr.MSIX_TABLE | MmioAttr.MSIX_PBA
    ranges = [r for r in conn.report.mmio_ranges if not r.range_attributes & msix]
    assert ranges and ranges[0].first_page == BAR0_ADDRESS
    assert tdi_state(device) == TdiState.RUN
    host.end_session()
    # §11.4.5: the session that locked the TDI ended -> ERROR, and its IDE keys are gone.
    assert tdi_state(device) == TdiState.ERROR
    assert host.stream_status() == IdeStreamState.INSECURE


def test_linux_cma_like_authentication(state_dir: Path) -> None:
    """Linux lib/spdm: requester caps CERT|CHAL only, CTExponent 20, no session; without
    CHUNK_CAP its DataTransferSize equals its MaxSPDMmsgSize (DSP0274 1.2)."""
    device = TeeDevice(state_dir=state_dir)
    host = mailbox_host(device)
    host.requester = Requester(RequesterConfig(
        capabilities=int(ReqCap.CERT | ReqCap.CHAL), ct_exponent=20,
        data_transfer_size=0x1000, max_spdm_msg_size=0x1000, trust_anchors=[device.identity.root]))
    r = host.requester
    host.run(r.init_connection())
    host.run(r.get_digests())
    host.run(r.get_certificate(0))
    host.run(r.challenge(0))
    assert r.version == 0x13


def test_heartbeat_watchdog_ends_a_silent_session_and_errors_its_tdi(state_dir: Path) -> None:
    """The device's timer ends a session silent for twice its HeartbeatPeriod even when
    nothing else arrives, and the TDI locked over it goes to ERROR (PCIe 6.x §11.4.5)."""
    now = [500.0]
    timers: list[tuple[float, Callable[[], None]]] = []
    device = TeeDevice(DeviceProfile(spdm_heartbeat_period=3), state_dir=state_dir,
                       clock=lambda: now[0],
                       defer_later=lambda delay, fn: timers.append((now[0] + delay, fn)))
    host = mailbox_host(device)
    host.requester.config.capabilities |= ReqCap.HBEAT
    host.to_run()
    sid = host.session_id
    assert sid is not None and device.responder.sessions[sid].heartbeat_period == 3
    assert tdi_state(device) == TdiState.RUN
    assert len(timers) == 1 and timers[0][0] == pytest.approx(506.05)
    now[0] = 504.0
    host.run(host.requester.heartbeat(sid))  # traffic at 504 s moves the deadline
    due, fire = timers.pop()
    now[0] = due
    fire()  # 506.05: the session is still fresh; the watchdog re-arms for 510 s
    assert sid in device.responder.sessions and len(timers) == 1
    due, fire = timers.pop()
    now[0] = due
    fire()
    assert sid not in device.responder.sessions
    assert tdi_state(device) == TdiState.ERROR
    assert timers == []  # nothing left to watch
