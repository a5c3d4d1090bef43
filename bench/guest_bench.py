"""Guest-measured connect and lock-to-RUN times, with the device-side cost.

The guest times `echo tsm0 > tsm/connect` and LOCK + START (from
/proc/uptime, 10 ms resolution) and brackets each step with BAR0 MARKER
writes; the device logs its activity counters at each marker, so the
differences are the DOE exchanges and config-space accesses a step took.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from vdev.endpoint.registers import REG_MARKER
from vdev.vm.demo import BDF, MAILBOX_BDF
from vdev.vm.env import VmEnvError, find_env
from vdev.vm.qemu import VfioUserAttach, choose_accel
from vdev.vm.session import (
    GuestRun,
    device_server,
    root_anchor,
    script,
    tsm_mailbox_server,
)

_MARKER = re.compile(r"guest marker (\d+): (.*)")


def guest_markers(log: str) -> dict[int, dict[str, int]]:
    """The device log's "guest marker N: key=value ..." lines (the guest script's
    writes to the marker register with the device's counters then), by N."""
    out: dict[int, dict[str, int]] = {}
    for line in log.splitlines():
        m = _MARKER.search(line)
        if m:
            out[int(m.group(1))] = {k: int(v) for k, v in
                                    (kv.split("=") for kv in m.group(2).split())}
    return out


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b
            if k.startswith(("config", "doe_exchanges", "doe_batch"))}


def bench_guest_connect(profile: Path | None = None, *, rounds: int = 1,
                        tsm_data_transfer_size: int | None = None,
                        cpu: int | None = None, doe_batch_qemu: Path | None = None,
                        ) -> dict[str, Any]:
    """Boot the guest once and time `rounds` connect -> RUN -> disconnect cycles with the
    device on `profile` (default: the built-in one).  The first connect is a TSM's first
    sight of the device; later ones repeat the same exchanges on warm processes.  `cpu`
    pins both servers, QEMU and all its threads to that CPU (docs/benchmarks.md §3: a
    round trip across vCPUs costs about twice one on a single vCPU).  `doe_batch_qemu`:
    boot that QEMU (make qemu's) with x-doe-batch on the device."""
    try:
        env = find_env()
    except VmEnvError as exc:
        return {"skipped": str(exc)}
    if doe_batch_qemu is not None:
        env = replace(env, qemu_override=doe_batch_qemu)
    saved = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # inherited by the servers and QEMU
    try:
        out = _boot_and_connect(env, profile, rounds, tsm_data_transfer_size,
                                doe_batch=doe_batch_qemu is not None)
    finally:
        os.sched_setaffinity(0, saved)
    out["pinned_cpu"] = cpu
    out["x_doe_batch"] = doe_batch_qemu is not None
    return out


def _boot_and_connect(env: Any, profile: Path | None, rounds: int,
                      tsm_data_transfer_size: int | None, *,
                      doe_batch: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vdev-bench-guest-") as tmp:
        work = Path(tmp)
        identity = work / "identity"
        extra = ["--state-dir", str(identity)]
        if profile is not None:
            extra += ["--profile", str(profile)]
        dev = device_server(work, "device", extra=extra).start()
        try:
            anchor = root_anchor(identity, work / "root.pem")
            tsm_args = ["--trust-anchor", str(anchor)]
            if tsm_data_transfer_size is not None:
                tsm_args += ["--spdm-data-transfer-size", str(tsm_data_transfer_size)]
            tsm = tsm_mailbox_server(work, tsm_args).start()
            try:
                res = GuestRun(
                    env=env, workdir=work, modules=["vdevtest", "vtsm"],
                    devices=[VfioUserAttach(dev.socket, doe_batch=doe_batch), tsm.socket],
                    timeout=240 + 30 * rounds,
                    scripts={"50-bench.sh": script("bench-connect.sh", EP=BDF, MB=MAILBOX_BDF,
                                                   MARKER_OFF=f"{REG_MARKER:#x}",
                                                   ROUNDS=str(rounds))},
                ).boot()
            finally:
                tsm.stop()
        finally:
            dev.stop()
        marks = guest_markers(dev.log_text())
    connects, runs = [], []
    for i in range(1, rounds + 1):
        rc, t0, t1 = (res.value(f"bench_connect_{i}") or "1 0 0").split()
        rc2, _, t2 = (res.value(f"bench_lock_to_run_{i}") or "1 0 0").split()
        if rc != "0" or rc2 != "0":
            return {"failed": f"round {i}: connect rc {rc}, lock/start rc {rc2}",
                    "accel": res.accel}
        connects.append(float(t1) - float(t0))
        runs.append(float(t2) - float(t1))
    if not {1, 2, 3} <= marks.keys():
        return {"failed": f"markers {sorted(marks)}", "accel": res.accel}
    totals = [c + r for c, r in zip(connects, runs, strict=True)]
    out: dict[str, Any] = {
        "accel": choose_accel(env),
        "connect_s": round(connects[0], 2),
        "lock_to_run_s": round(runs[0], 2),
        "connect_to_run_s": round(totals[0], 2),
        "state": res.value("bench_state"),
        "connect_device_side": _delta(marks[1], marks[2]),
        "lock_to_run_device_side": _delta(marks[2], marks[3]),
    }
    if rounds > 1:
        later = sorted(totals[1:])
        out["rounds"] = rounds
        out["connect_to_run_all_s"] = [round(t, 2) for t in totals]
        out["connect_to_run_p50_later_s"] = round(later[len(later) // 2], 2)
    return out


# Guest connect per suite: shipped profiles where one exists, else a profile written for
# the bench (every one SPDM 1.4; the TSM offers everything and the device picks).
GUEST_SUITES: dict[str, str] = {
    "P-384/SECP384R1 (default, SPDM 1.3)": "",
    "P-256/ML-KEM-768": 'spdm_versions = "1.2,1.3,1.4"\nidentity_key_type = "ecdsa-p256"\n'
                        'spdm_asym = "ECDSA_P256"\nspdm_kem = "ML_KEM_768"\n'
                        'spdm_pqc_first = true\n',
    "P-384/ML-KEM-1024 (pqc-kem)": "pqc-kem",
    "ML-DSA-44/ML-KEM-768 (pqc-mldsa44)": "pqc-mldsa44",
    "ML-DSA-65/ML-KEM-768 (pqc-mldsa65)": "pqc-mldsa65",
    "ML-DSA-87/ML-KEM-1024 (pqc)": "pqc",
}


def bench_guest_suites(cpu: int | None, rounds: int = 3) -> dict[str, Any]:
    """Every suite pinned to `cpu`; the `pqc` suite also unpinned, for comparison."""
    from vdev.profiles import resolve_profile

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vdev-bench-suites-") as tmp:
        for name, spec in GUEST_SUITES.items():
            if not spec:
                profile = None
            elif "\n" in spec:
                profile = Path(tmp) / f"suite{len(out)}.toml"
                profile.write_text(spec)
            else:
                profile = resolve_profile(spec)
            out[name] = bench_guest_connect(profile, rounds=rounds, cpu=cpu)
        if cpu is not None:
            out["ML-DSA-87/ML-KEM-1024 (pqc), unpinned"] = bench_guest_connect(
                resolve_profile("pqc"), rounds=rounds)
    return out


def bench_guest_suites_doe_batch(cpu: int | None, qemu: Path, rounds: int = 3,
                                 ) -> dict[str, Any]:
    """The `pqc` suite on make qemu's QEMU with x-doe-batch, pinned to `cpu` and unpinned."""
    from vdev.profiles import resolve_profile

    pqc = resolve_profile("pqc")
    out = {"unpinned": bench_guest_connect(pqc, rounds=rounds, doe_batch_qemu=qemu)}
    if cpu is not None:
        out["pinned"] = bench_guest_connect(pqc, rounds=rounds, cpu=cpu, doe_batch_qemu=qemu)
    return out
