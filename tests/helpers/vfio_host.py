"""Host side of the survival tests (and of the TeeDevice VDM fuzz test).

`host_over` is the TSM + host kernel of tests/device/secure_host.py driven over a real
vfio-user socket: every DOE DW and config access is a REGION_READ / REGION_WRITE.
The local TeeDevice passed in only supplies register offsets, the interface id and
the trust anchor when the device that answers is a subprocess.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from spdm.requester import Outgoing
from tdisp.codes import TdiState
from tdisp.requesters import TdispRequester
from tests.helpers.secure_host import ConfigPort, SecureHost
from vdev.doe.requester import DoeRequester
from vdev.endpoint.tee_device import TeeDevice
from vdev.pci.device_api import RegionIndex
from vdev.vfio_user.client import VfioUserClient

DOE_CAP = 0x100
REPORT = Path(__file__).resolve().parents[2] / "out" / "survival" / "report.json"


@dataclass
class Proc:
    """What /proc says about a process."""

    pid: int

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def maps(self) -> list[str]:
        return Path(f"/proc/{self.pid}/maps").read_text().splitlines()

    def memfd_maps(self) -> int:
        return sum("/memfd:" in line for line in self.maps())

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def config_doe(client: VfioUserClient) -> tuple[DoeRequester, ConfigPort]:
    """The device's config space through a vfio-user client (REGION_READ/WRITE), and the
    DOE mailbox at DOE_CAP over it."""

    def read(offset: int, size: int) -> int:
        return int.from_bytes(client.region_read(RegionIndex.CONFIG, offset, size), "little")

    def write(offset: int, size: int, value: int) -> None:
        client.region_write(RegionIndex.CONFIG, offset, value.to_bytes(size, "little"))

    doe = DoeRequester(lambda off: read(off, 4), lambda off, v: write(off, 4, v), DOE_CAP)
    return doe, ConfigPort(read, write)


def host_over(client: VfioUserClient, local: TeeDevice) -> tuple[SecureHost, DoeRequester]:
    doe, port = config_doe(client)

    def transport(out: Outgoing) -> bytes:
        return doe.exchange_bytes(out.doe_type, out.data)

    return SecureHost(local, port, transport, local.identity.root), doe


def tdi_state(host: SecureHost) -> TdiState:
    req = TdispRequester(host.interface_id())
    return req.parse_state(host.vdm(req.get_state()))


def full_flow(host: SecureHost, doe: DoeRequester, start: bool = True) -> None:
    """What a TSM does on a fresh connect: abort the mailbox (pci_doe_create_mb),
    authenticate, open a session, recover a TDI a previous session left behind
    (STOP_INTERFACE from ERROR or CONFIG_LOCKED), IDE keys, LOCK, report, START."""
    doe.abort()
    host.authenticate()
    host.open_session()
    if tdi_state(host) != TdiState.CONFIG_UNLOCKED:
        req = TdispRequester(host.interface_id())
        req.parse_stop(host.vdm(req.stop()))
    host.secure_stream()
    conn = host.tdisp_connect(start=start)
    assert conn.state == (TdiState.RUN if start else TdiState.CONFIG_LOCKED)


def report(section: str, values: dict[str, object]) -> None:
    """Merge `values` into out/survival/report.json (figures for humans and CI logs)."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[section] = values
    REPORT.write_text(json.dumps(data, indent=2) + "\n")
