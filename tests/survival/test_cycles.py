"""100 connect/disconnect cycles against one `vdev serve` process, without leaks.

Each cycle: connect, negotiate, DMA_MAP a 1 MiB memfd (the server mmaps it), SPDM
VCA + DIGESTS + CERTIFICATE + KEY_EXCHANGE/FINISH over DOE over vfio-user, then
END_SESSION (even cycles) or abandon the session (odd cycles), disconnect.

Measured on the server process after a warm-up of WARMUP cycles and after the last:
open fds (must be equal), memfd mappings (0 once the client is gone; 1 while
connected), /proc/PID/maps lines (bounded), VmRSS (growth under RSS_BOUND_KIB),
SPDM sessions (from the server log: every session established is ended, at the
latest by the next client's GET_VERSION, so at most one is ever left).
Figures go to out/survival/report.json.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.helpers.vfio_host import host_over, report
from tests.survival.conftest import Served
from vdev.vfio_user.client import make_memfd

CYCLES = 100
WARMUP = 10
MEMFD_SIZE = 1 << 20
#: RSS growth allowed over the 90 measured cycles.  A leak of one DMA map (1 MiB
#: memfd, touched) or one SPDM session object per cycle would exceed it several times.
RSS_BOUND_KIB = 4096
#: /proc/PID/maps may move by a few lines (malloc arenas, Python's obmalloc).
MAPS_SLACK = 8

pytestmark = pytest.mark.timeout(300)


def _settle(served: Served, baseline_fds: int | None = None) -> None:
    """Wait until the server has processed the disconnect (fds back down)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if served.proc.memfd_maps() == 0 and (
                baseline_fds is None or served.proc.fds() <= baseline_fds):
            return
        time.sleep(0.01)


def _cycle(served: Served, i: int) -> tuple[int, int]:
    """One cycle; returns (memfd maps, fds) seen while connected."""
    fd = make_memfd(MEMFD_SIZE)
    try:
        with served.client() as c:
            c.dma_map(0, MEMFD_SIZE, fd=fd)
            c.dma_map(1 << 32, 4096)  # a map without an fd (served by DMA messages)
            host, doe = host_over(c, served.local)
            doe.abort()
            host.run(host.requester.init_connection())
            host.run(host.requester.get_digests())
            host.run(host.requester.get_certificate(0))
            host.open_session()
            connected = (served.proc.memfd_maps(), served.proc.fds())
            if i % 2 == 0:
                host.end_session()
            # odd cycles: abandon the session (the next GET_VERSION ends it)
    finally:
        os.close(fd)
    return connected


def test_hundred_cycles_without_leaks(served: Served) -> None:
    t0 = time.monotonic()
    for i in range(WARMUP):
        _cycle(served, i)
    _settle(served)
    proc = served.proc
    fds0, maps0, rss0 = proc.fds(), len(proc.maps()), proc.rss_kib()
    during: list[tuple[int, int]] = []
    for i in range(WARMUP, CYCLES):
        during.append(_cycle(served, i))
        _settle(served, fds0)
    fds1, maps1, rss1 = proc.fds(), len(proc.maps()), proc.rss_kib()
    elapsed = time.monotonic() - t0

    log = served.server.log_text()
    established = len(re.findall(r"SPDM session 0x[0-9a-f]+ established", log))
    ended = len(re.findall(r"SPDM session 0x[0-9a-f]+ ended", log))
    connects = log.count("client connected")
    gone = log.count("client dropped")  # "client dropped: client disconnected" when clean
    report("cycles", {
        "cycles": CYCLES, "seconds": round(elapsed, 2),
        "server_fds": [fds0, fds1], "server_maps": [maps0, maps1],
        "memfd_maps_while_connected": sorted({m for m, _ in during}),
        "server_rss_kib": [rss0, rss1], "rss_growth_kib": rss1 - rss0,
        "rss_bound_kib": RSS_BOUND_KIB,
        "spdm_sessions_established": established, "spdm_sessions_ended": ended,
    })
    print(f"\n{CYCLES} cycles in {elapsed:.1f} s: server fds {fds0}->{fds1}, maps "
          f"{maps0}->{maps1}, RSS {rss0}->{rss1} KiB, sessions {established} established "
          f"/ {ended} ended")

    assert all(m == 1 for m, _ in during), "the memfd is mapped while the client is connected"
    assert proc.memfd_maps() == 0, "a DMA map outlived its client"
    assert fds1 == fds0, f"server fds {fds0} -> {fds1}"
    assert maps1 - maps0 <= MAPS_SLACK, f"server maps {maps0} -> {maps1}"
    assert rss1 - rss0 < RSS_BOUND_KIB, f"server RSS grew {rss1 - rss0} KiB"
    assert connects >= CYCLES and gone == connects
    # Every session but (at most) the last abandoned one has ended.
    assert established >= CYCLES and established - ended <= 1
