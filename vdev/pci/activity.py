"""Activity counters of a device: what the host did to it, for benchmarks and tracing.

Counts config-space, BAR and DOE batch region accesses (reads and writes, as
vfio-user region accesses) and DOE exchanges per protocol.  A guest can bracket a step with
writes to the BAR0 MARKER register; each marker logs the running totals, so
the difference between two markers is what the step cost on the device side.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from vdev.pci.device_api import FIRST_DEVICE_REGION, RegionIndex

log = logging.getLogger("vdev.pci.activity")


class ActivityCounters:
    def __init__(self) -> None:
        # Per region index, the device-specific one (the DOE batch region) last:
        # accesses so far (plain lists: counted on every access).
        self.reads = [0] * (FIRST_DEVICE_REGION + 1)
        self.writes = [0] * (FIRST_DEVICE_REGION + 1)
        self.doe: Counter[str] = Counter()  # "VVVV:TT" -> exchanges

    def doe_exchange(self, protocol: Any, request: bytes, response: bytes) -> None:
        vendor = getattr(protocol, "vendor_id", 0)
        typ = getattr(protocol, "data_object_type", 0)
        self.doe[f"{vendor:04x}:{typ:02x}"] += 1

    def snapshot(self) -> dict[str, int]:
        cfg = RegionIndex.CONFIG
        return {
            "config_reads": self.reads[cfg],
            "config_writes": self.writes[cfg],
            "bar_reads": sum(self.reads[RegionIndex.BAR0 : RegionIndex.BAR5 + 1]),
            "bar_writes": sum(self.writes[RegionIndex.BAR0 : RegionIndex.BAR5 + 1]),
            "doe_batch_reads": self.reads[FIRST_DEVICE_REGION],
            "doe_batch_writes": self.writes[FIRST_DEVICE_REGION],
            "doe_exchanges": sum(self.doe.values()),
            **{f"doe_{k}": v for k, v in sorted(self.doe.items())},
        }

    def log_marker(self, value: int) -> None:
        snap = self.snapshot()
        # The server's CPU time so far: a benchmark bracketing a step with markers gets
        # what the step cost the device process, besides the accesses it made.
        snap["process_cpu_us"] = time.process_time_ns() // 1000
        log.info("guest marker %d: %s", value, " ".join(f"{k}={v}" for k, v in snap.items()))
