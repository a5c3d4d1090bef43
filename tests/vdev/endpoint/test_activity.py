"""Activity counters and the BAR0 MARKER register."""

from __future__ import annotations

import logging

import pytest

from vdev.doe.requester import DoeRequester
from vdev.endpoint.function import TeeIoEndpoint
from vdev.endpoint.registers import REG_MARKER
from vdev.pci.device_api import RegionIndex


def test_counts_accesses_and_doe_exchanges(caplog: pytest.LogCaptureFixture) -> None:
    ep = TeeIoEndpoint()

    def rd(off: int) -> int:
        return int.from_bytes(ep.region_read(RegionIndex.CONFIG, off, 4), "little")

    def wr(off: int, value: int) -> None:
        ep.region_write(RegionIndex.CONFIG, off, value.to_bytes(4, "little"))

    doe = DoeRequester(rd, wr, 0x100)
    doe.abort()
    before = ep.activity.snapshot()
    assert doe.discover() == [(1, 0), (1, 1), (1, 2)]
    after = ep.activity.snapshot()
    assert after["doe_exchanges"] - before["doe_exchanges"] == 3
    assert after["doe_0001:00"] == 3
    assert after["config_writes"] > before["config_writes"]
    with caplog.at_level(logging.INFO, logger="vdev.pci.activity"):
        ep.region_write(RegionIndex.BAR0, REG_MARKER, (7).to_bytes(4, "little"))
    assert "guest marker 7:" in caplog.text and "doe_exchanges=3" in caplog.text
    assert ep.activity.snapshot()["bar_writes"] == 1
