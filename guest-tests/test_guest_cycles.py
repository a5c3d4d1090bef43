"""20 connect -> RUN -> disconnect cycles in one guest, without leaks on either side.

Server-side file descriptors and RSS of both `vdev serve` and `vdev tsm
serve` are sampled after the first cycle and after the last (the guest
sleeps a second after each so the sample falls between cycles); the guest
reports MemAvailable and slab usage at the same two points.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from vdev.vm.checks import BAD_DMESG
from vdev.vm.env import VmEnv
from vdev.vm.session import (
    GuestRun,
    ServerProcess,
    device_server,
    root_anchor,
    script,
    tsm_mailbox_server,
)

EP, MB, N = "0000:01:00.0", "0000:02:00.0", 20


def _sample(srv: ServerProcess) -> tuple[int, int]:
    assert srv.proc is not None
    pid = srv.proc.pid
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return fds, rss


def test_twenty_cycles_without_leaks(vm_env: VmEnv, workdir: Path) -> None:
    identity = workdir / "identity"
    dev = device_server(workdir, "device", extra=["--state-dir", str(identity)]).start()
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        anchor = root_anchor(identity, workdir / "root.pem")
        tsm = tsm_mailbox_server(workdir, ["--trust-anchor", str(anchor)]).start()
        try:
            def on_line(line: str) -> None:
                for mark in ("mark_after_first", "mark_after_last"):
                    if f"@@VDEV {mark} " in line:
                        # Sample off the console thread, while the guest sleeps.
                        threading.Thread(target=lambda m=mark: samples.__setitem__(
                            m, {"device": _sample(dev), "tsm": _sample(tsm)})).start()

            res = GuestRun(env=vm_env, workdir=workdir, modules=["vtsm"],
                           devices=[dev.socket, tsm.socket], timeout=300,
                           scripts={"50-cycles.sh": script("cycles.sh", EP=EP, MB=MB, N=N)},
                           ).boot(on_line=on_line)
        finally:
            tsm.stop()
        tsm_log = tsm.log_text()
    finally:
        dev.stop()
    assert res.value("cycles_ok") == f"{N} {N}", res.value("cycles_ok")
    assert res.value("rmmod") == "ok" and res.completed
    bad = [line for line in res.dmesg if BAD_DMESG.search(line)]
    assert not bad, bad
    dev_log = dev.log_text()
    assert dev_log.count("established (") == N and dev_log.count(" ended") >= N
    assert "Traceback" not in dev_log + tsm_log
    first, last = samples["mark_after_first"], samples["mark_after_last"]
    for side in ("device", "tsm"):
        (fd1, rss1), (fdn, rssn) = first[side], last[side]
        assert fdn == fd1, f"{side}: fds {fd1} -> {fdn}"
        assert rssn - rss1 < 8 * 1024, f"{side}: RSS {rss1} -> {rssn} KiB"
    avail1, slab1 = map(int, (res.value("cycle1_mem") or "0 0").split())
    availn, slabn = map(int, (res.value("cycleN_mem") or "0 0").split())
    assert slabn - slab1 < 2048, f"guest slab {slab1} -> {slabn} KiB"
    assert avail1 - availn < 4096, f"guest MemAvailable {avail1} -> {availn} KiB"
    (workdir / "leaks.txt").write_text(
        f"server (fds, RSS KiB) after cycle 1: {first}\nafter cycle {N}: {last}\n"
        f"guest (MemAvailable, Slab) KiB: {avail1} {slab1} -> {availn} {slabn}\n")
