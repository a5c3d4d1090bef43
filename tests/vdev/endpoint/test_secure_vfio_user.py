"""The full SPDM / IDE_KM / TDISP flow through the real vfio-user server over a UNIX
socket: DOE and every config access are REGION_READ / REGION_WRITE messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spdm.requester import Outgoing
from tdisp.codes import TdiState
from tests.helpers.secure_host import BAR0_ADDRESS, ConfigPort, SecureHost, tdi_state
from vdev.doe.requester import DoeRequester
from vdev.endpoint.tee_device import TeeDevice
from vdev.pci.device_api import RegionIndex
from vdev.pci.header import CMD_MEMORY, COMMAND
from vdev.vfio_user.client import VfioUserClient
from vdev.vfio_user.threaded import serve_in_thread

DOE_CAP = 0x100


@pytest.fixture
def served(state_dir: Path) -> Iterator[tuple[TeeDevice, VfioUserClient]]:
    with serve_in_thread(lambda loop: TeeDevice(state_dir=state_dir)) as served, \
            VfioUserClient(served.path, timeout=5.0) as client:
        client.negotiate()
        yield served.device, client


def socket_host(device: TeeDevice, client: VfioUserClient) -> SecureHost:
    def read(offset: int, size: int) -> int:
        return int.from_bytes(client.region_read(RegionIndex.CONFIG, offset, size), "little")

    def write(offset: int, size: int, value: int) -> None:
        client.region_write(RegionIndex.CONFIG, offset, value.to_bytes(size, "little"))

    cfg = ConfigPort(read, write)
    doe = DoeRequester(lambda off: read(off, 4), lambda off, v: write(off, 4, v), DOE_CAP)

    def transport(out: Outgoing) -> bytes:
        return doe.exchange_bytes(out.doe_type, out.data)

    return SecureHost(device, cfg, transport, device.identity.root)


def test_full_flow_over_vfio_user(served: tuple[TeeDevice, VfioUserClient]) -> None:
    device, client = served
    host = socket_host(device, client)
    conn = host.full_flow()
    assert conn.state == TdiState.RUN
    assert min(r.first_page for r in conn.report.mmio_ranges) == BAR0_ADDRESS
    # Enforcement sees the forwarded Command write.
    host.cfg.write(COMMAND, 2, host.cfg.read(COMMAND, 2) & ~CMD_MEMORY)
    assert tdi_state(device) == TdiState.ERROR
    # vfio-user DEVICE_RESET is an FLR: back to CONFIG_UNLOCKED.
    client.device_reset()
    assert tdi_state(device) == TdiState.CONFIG_UNLOCKED
    host.run(host.requester.heartbeat(host.session_id))
    host.end_session()
    assert not device.responder.sessions
