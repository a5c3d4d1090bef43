"""Activity counters of a device: what the host did to it, for benchmarks and tracing.

Counts config-space and BAR accesses (reads and writes, as vfio-user region
accesses) and DOE exchanges per protocol.  A guest can bracket a step with
writes to the BAR0 MARKER register; each marker logs the running totals, so
the difference between two markers is what the step cost on the device side.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from vdev.pci.device_api import RegionIndex

log = logging.getLogger("vdev.pci.activity")


class ActivityCounters:
    def __init__(self) -> None:
        self.accesses: Counter[tuple[int, bool]] = Counter()  # (region, is_write) -> count
        self.doe: Counter[str] = Counter()  # "VVVV:TT" -> exchanges

    def doe_exchange(self, protocol: Any, request: bytes, response: bytes) -> None:
        vendor = getattr(protocol, "vendor_id", 0)
        typ = getattr(protocol, "data_object_type", 0)
        self.doe[f"{vendor:04x}:{typ:02x}"] += 1

    def snapshot(self) -> dict[str, int]:
        cfg = RegionIndex.CONFIG
        bars = [i for i in range(6)]
        return {
            "config_reads": self.accesses[(cfg, False)],
            "config_writes": self.accesses[(cfg, True)],
            "bar_reads": sum(self.accesses[(i, False)] for i in bars),
            "bar_writes": sum(self.accesses[(i, True)] for i in bars),
            "doe_exchanges": sum(self.doe.values()),
            **{f"doe_{k}": v for k, v in sorted(self.doe.items())},
        }

    def log_marker(self, value: int) -> None:
        snap = self.snapshot()
        log.info("guest marker %d: %s", value, " ".join(f"{k}={v}" for k, v in snap.items()))
