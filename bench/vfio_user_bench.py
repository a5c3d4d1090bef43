"""vfio-user round trips and one DOE discovery exchange against `vdev serve`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.vfio_user_c import build_c_client, c_config_read, pinned_c_config_reads
from vdev.doe.requester import DoeRequester
from vdev.endpoint.registers import REG_SCRATCH0
from vdev.pci.device_api import RegionIndex
from vdev.vfio_user.client import VfioUserClient
from vdev.vm.session import device_server

DOE_CAP = 0x100  # default profile layout


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] / 1000.0

    return {
        "n": len(s), "p50_us": round(pct(0.50), 2), "p99_us": round(pct(0.99), 2),
        "mean_us": round(statistics.fmean(s) / 1000.0, 2),
    }


def _timed(op: Callable[[], object], n: int, warmup: int = 200) -> dict[str, float]:
    for _ in range(warmup):
        op()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        op()
        samples.append(time.perf_counter_ns() - t0)
    return _percentiles(samples)


def run_vfio_user_benchmarks(workdir: Path, n: int = 5000) -> dict[str, Any]:
    server = device_server(workdir).start()
    try:
        with VfioUserClient(str(server.socket)) as c:
            c.negotiate()
            cfg = RegionIndex.CONFIG
            bar0 = RegionIndex.BAR0
            out: dict[str, Any] = {
                "config_read": _timed(lambda: c.region_read(cfg, 0, 4), n),
                "config_write": _timed(lambda: c.region_write(cfg, 0x04, b"\x06\x00"), n),
                "bar0_read": _timed(lambda: c.region_read(bar0, REG_SCRATCH0, 4), n),
                "bar0_write": _timed(lambda: c.region_write(bar0, REG_SCRATCH0, b"\1\0\0\0"), n),
            }

            def rd(off: int) -> int:
                return int.from_bytes(c.region_read(cfg, off, 4), "little")

            def wr(off: int, value: int) -> None:
                c.region_write(cfg, off, value.to_bytes(4, "little"))

            doe = DoeRequester(rd, wr, DOE_CAP)
            doe.abort()
            out["doe_discovery_exchange"] = _timed(
                lambda: doe.exchange(0x0001, 0x00, [0x0200]), 500, warmup=20
            )
            out["doe_discovery_walk"] = _timed(doe.discover, 200, warmup=5)
            out["doe_discovery_walk"]["protocols"] = [
                f"{v:04x}:{t:02x}" for v, t in doe.discover()
            ]
        # The same REGION_READ from a C client, as QEMU sends it (the server takes one
        # client at a time, so this runs after the Python client has left).
        exe = build_c_client(workdir)
        if isinstance(exe, Path):
            out["config_read_c_client"] = _percentiles(
                c_config_read(exe, str(server.socket), n * 4, 2000))
            if server.proc is not None:
                out["config_read_c_client_pinned"] = pinned_c_config_reads(
                    exe, str(server.socket), server.proc.pid, n * 2)
        else:
            out["config_read_c_client"] = {"skipped": exe}
        out["server_rss_mb"] = _rss_mb(server.proc.pid if server.proc else 0)
        return out
    finally:
        server.stop()


def _rss_mb(pid: int) -> float | None:
    """Resident set of the `vdev serve` process after the benchmarks (VmRSS)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None
