"""Smoke test: the endpoint behind the real vfio-user server, driven over the socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.fakes import Cfg
from tests.helpers.linux_doe import LinuxDoe
from vdev.endpoint.function import TeeIoEndpoint
from vdev.pci.device_api import RegionIndex
from vdev.vfio_user.client import VfioUserClient
from vdev.vfio_user.threaded import serve_in_thread


class SocketCfg(Cfg):
    """Config accesses carried by vfio-user REGION_READ/REGION_WRITE."""

    def __init__(self, client: VfioUserClient) -> None:
        self.client = client

    def read(self, offset: int, size: int = 4) -> int:
        data = self.client.region_read(RegionIndex.CONFIG, offset, size)
        return int.from_bytes(data, "little")

    def write(self, offset: int, value: int, size: int = 4) -> None:
        self.client.region_write(RegionIndex.CONFIG, offset, value.to_bytes(size, "little"))


@pytest.fixture
def client() -> Iterator[tuple[TeeIoEndpoint, VfioUserClient]]:
    with serve_in_thread(lambda loop: TeeIoEndpoint()) as served, \
            VfioUserClient(served.path, timeout=2.0) as c:
        c.negotiate()
        yield served.device, c


def test_discovery_and_flr_over_the_socket(client: tuple[TeeIoEndpoint, VfioUserClient]) -> None:
    endpoint, c = client
    assert c.get_region_info(RegionIndex.CONFIG).size == 4096
    assert c.get_region_info(RegionIndex.BAR0).size == 0x10000
    assert c.region_read(RegionIndex.BAR0, 0, 4) == b"VDEV"
    cfg = SocketCfg(c)
    doe = LinuxDoe(cfg, 0x100)
    doe.abort()
    assert doe.discover() == [(1, 0), (1, 1), (1, 2)]
    c.region_write(RegionIndex.BAR0, 0x10, b"\x01\x02\x03\x04")
    devctl = endpoint.pcie.offset + 8
    cfg.write(devctl, cfg.read(devctl, 2) | 0x8000, 2)
    assert c.region_read(RegionIndex.BAR0, 0x10, 4) == bytes(4)
    assert c.region_read(RegionIndex.BAR0, 0x28, 4) == b"\x01\x00\x00\x00"
