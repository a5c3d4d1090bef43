"""Guest-measured connect and lock-to-RUN times, with the device-side cost.

The guest times `echo tsm0 > tsm/connect` and LOCK + START (from
/proc/uptime, 10 ms resolution) and brackets each step with BAR0 MARKER
writes; the device logs its activity counters at each marker, so the
differences are the DOE exchanges and config-space accesses a step took.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from vdev.endpoint.registers import REG_MARKER
from vdev.vm.demo import BDF, MAILBOX_BDF
from vdev.vm.env import VmEnvError, find_env
from vdev.vm.qemu import choose_accel
from vdev.vm.session import (
    GuestRun,
    device_server,
    root_anchor,
    script,
    tsm_mailbox_server,
)

_MARKER = re.compile(r"guest marker (\d+): (.*)")


def _markers(log: str) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for line in log.splitlines():
        m = _MARKER.search(line)
        if m:
            out[int(m.group(1))] = {k: int(v) for k, v in
                                    (kv.split("=") for kv in m.group(2).split())}
    return out


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b if k.startswith(("config", "doe_exchanges"))}


def bench_guest_connect() -> dict[str, Any]:
    try:
        env = find_env()
    except VmEnvError as exc:
        return {"skipped": str(exc)}
    with tempfile.TemporaryDirectory(prefix="vdev-bench-guest-") as tmp:
        work = Path(tmp)
        identity = work / "identity"
        dev = device_server(work, "device", extra=["--state-dir", str(identity)]).start()
        try:
            anchor = root_anchor(identity, work / "root.pem")
            tsm = tsm_mailbox_server(work, ["--trust-anchor", str(anchor)]).start()
            try:
                res = GuestRun(
                    env=env, workdir=work, modules=["vdevtest", "vtsm"],
                    devices=[dev.socket, tsm.socket], timeout=240,
                    scripts={"50-bench.sh": script("bench-connect.sh", EP=BDF, MB=MAILBOX_BDF,
                                                   MARKER_OFF=f"{REG_MARKER:#x}")},
                ).boot()
            finally:
                tsm.stop()
        finally:
            dev.stop()
        marks = _markers(dev.log_text())
    rc, t0, t1 = (res.value("bench_connect") or "1 0 0").split()
    rc2, _, t2 = (res.value("bench_lock_to_run") or "1 0 0").split()
    if rc != "0" or rc2 != "0" or not {1, 2, 3} <= marks.keys():
        return {"failed": f"connect rc {rc}, lock/start rc {rc2}, markers {sorted(marks)}",
                "accel": res.accel}
    connect_s, run_s = float(t1) - float(t0), float(t2) - float(t1)
    return {
        "accel": choose_accel(env),
        "connect_s": round(connect_s, 2),
        "lock_to_run_s": round(run_s, 2),
        "connect_to_run_s": round(connect_s + run_s, 2),
        "state": res.value("bench_state"),
        "connect_device_side": _delta(marks[1], marks[2]),
        "lock_to_run_device_side": _delta(marks[2], marks[3]),
    }
