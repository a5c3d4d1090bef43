"""Where the time of a 4 KiB DOE exchange goes, measured from the 7.3 guest.

The guest's own DOE driver (drivers/pci/doe.c through pci_doe(), driven by the
vdevtest module's `doe` attribute) runs SPDM GET_CERTIFICATE exchanges whose
response object is exactly 4 KiB (bench/doe_throughput.py says how), after the
connection set-up requests, which the host records against an in-process device
of the same profile and identity.  vdevtest times each pci_doe() call and,
separately, back-to-back config reads of three DWs: 0x100, which QEMU answers
from its own copy (what a config access costs in the guest under TCG and in
QEMU without a vfio-user message), the DW at 0 and DOE Status (each a vfio-user
round trip to our server).  The device logs its access counters and CPU time at
MARKER writes around the exchanges, so the JSON has, per config access: the
guest's time, the part that is QEMU's vfio-user round trip plus our server, and
our server's CPU time; and the exchange time against the round-trip floor
(accesses x the pinned C-client round trip to the blocking floor server, from
bench/config_access.py).  QEMU, its threads and the server run pinned to one CPU.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.doe_throughput import (
    CERTIFICATE_HEADER_SIZE,
    DOE_HEADER_SIZE,
    PROFILE,
    _get_certificate,
)
from bench.guest_bench import guest_markers
from spdm.algorithms import BaseAsym, BaseHash
from spdm.requester import AlgorithmOffer, Outgoing, Requester, RequesterConfig
from vdev.endpoint.registers import REG_MARKER
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import load_profile
from vdev.vm.demo import BDF
from vdev.vm.env import VmEnvError, find_env
from vdev.vm.qemu import VfioUserAttach, choose_accel
from vdev.vm.session import GuestRun, device_server, script

OBJECT = 4096
DOE_STATUS = 0x10C  # default profile: DOE capability at 0x100
TARGET_RATIO = 1.5


def _vca_requests(profile_path: Path, state_dir: Path) -> tuple[list[bytes], int]:
    """The SPDM requests that take a fresh connection to NEGOTIATE_ALGORITHMS, and
    the negotiated version, from an in-process device of the same profile (this
    also creates the identity the server will load)."""
    device = TeeDevice(load_profile(str(profile_path)), state_dir=state_dir)
    req = Requester(RequesterConfig(trust_anchors=[], algorithms=AlgorithmOffer(
        base_asym=int(BaseAsym.RSASSA_4096), base_hash=int(BaseHash.SHA_384))))
    sent: list[bytes] = []

    def transport(out: Outgoing) -> bytes:
        sent.append(out.data)
        return device.spdm_message(out.doe_type, out.data)[1]

    req.run(req.init_connection(), transport)
    return sent, req.conn.version


def _per_access_ns(value: str | None) -> float | None:
    if not value:
        return None
    count, ns = (int(x) for x in value.split())
    return ns / count


def bench_guest_doe(cpu: int | None, floor_rtt_us: float | None = None,
                    ours_rtt_us: float | None = None, exchanges: int = 20,
                    reads: int = 2000, qemu: Path | None = None,
                    post_config_writes: bool = False, doe_batch: bool = False,
                    guest_accesses: int | None = None) -> dict[str, Any]:
    """One boot; `cpu` pins this process's children (server, QEMU and all its
    threads) to that CPU.  `floor_rtt_us`/`ours_rtt_us` are the pinned C-client
    round trips to the floor server and to `vdev serve` (config_access).
    `qemu` replaces the VM environment's QEMU (`make qemu`'s, whose series has
    the vfio-user changes of qemu/README.md); `post_config_writes` and `doe_batch`
    turn on its x-post-config-writes and x-doe-batch.  With x-doe-batch most of
    the guest's config accesses never reach the server, so the floor is taken
    over `guest_accesses`, the count a run without it measured."""
    try:
        env = find_env()
    except VmEnvError as exc:
        return {"skipped": str(exc)}
    if qemu is not None:
        env = replace(env, qemu_override=qemu)
    saved = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="vdev-bench-doe-") as tmp:
        work = Path(tmp)
        profile = work / "doe-bench.toml"
        profile.write_text(PROFILE)
        state = work / "identity"
        vca, version = _vca_requests(profile, state)
        cert = _get_certificate(version, 0, OBJECT - DOE_HEADER_SIZE - CERTIFICATE_HEADER_SIZE)
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})  # inherited by the server and QEMU
            dev = device_server(work, "doe", ["--profile", str(profile),
                                              "--state-dir", str(state)]).start(timeout=120)
            try:
                res = GuestRun(
                    env=env, workdir=work, modules=["vdevtest"],
                    devices=[VfioUserAttach(dev.socket, post_config_writes=post_config_writes,
                                            doe_batch=doe_batch)],
                    timeout=300,
                    scripts={"50-doe-bench.sh": script(
                        "doe-bench.sh", EP=BDF, MARKER_OFF=f"{REG_MARKER:#x}", N=reads,
                        DOE_STATUS=f"{DOE_STATUS:#x}", K=exchanges,
                        VCA=f'"{" ".join(r.hex() for r in vca)}"', CERT=cert.hex())},
                ).boot()
            finally:
                dev.stop()
        finally:
            os.sched_setaffinity(0, saved)
        marks = guest_markers(dev.log_text())
    times = [int(x) for x in (res.value("doe_ns") or "").split()]
    rc = res.value("doe_rc")
    if len(times) < exchanges or not {1, 2} <= marks.keys() or rc is None or int(rc) <= 0:
        return {"failed": f"{len(times)} exchanges timed, doe rc {rc}, markers {sorted(marks)}",
                "accel": res.accel}
    a, b = marks[1], marks[2]
    forwarded_accesses = ((b["config_reads"] - a["config_reads"])
                          + (b["config_writes"] - a["config_writes"])) / exchanges
    batch_accesses = ((b["doe_batch_reads"] - a["doe_batch_reads"])
                      + (b["doe_batch_writes"] - a["doe_batch_writes"])) / exchanges
    if doe_batch and guest_accesses is None:
        return {"skipped": "x-doe-batch needs the guest's access count from a run without it"}
    accesses = guest_accesses if doe_batch and guest_accesses else forwarded_accesses
    exchange_ms = statistics.median(times) / 1e6
    per_access = exchange_ms * 1000 / accesses
    emulated = _per_access_ns(res.value("cfg_emulated"))
    forwarded = _per_access_ns(res.value("cfg_forwarded"))
    status = _per_access_ns(res.value("cfg_doe_status"))
    server_cpu = (b["process_cpu_us"] - a["process_cpu_us"]) / exchanges / accesses
    out: dict[str, Any] = {
        "qemu": env.qemu_version() + (f" ({qemu})" if qemu else ""),
        "x_post_config_writes": post_config_writes,
        "x_doe_batch": doe_batch,
        "accel": choose_accel(env),
        "pinned_cpu": cpu,
        "object_bytes": OBJECT,
        "config_accesses_per_exchange": round(accesses),
        "messages_to_the_server_per_exchange": {
            "config_accesses": round(forwarded_accesses, 1),
            "doe_batch_region_accesses": round(batch_accesses, 1),
        },
        "server_cpu_ms_per_exchange": round(
            (b["process_cpu_us"] - a["process_cpu_us"]) / exchanges / 1000, 2),
        "exchange_ms_p50": round(exchange_ms, 2),
        "exchange_ms_all": [round(t / 1e6, 2) for t in times],
        "per_config_access_us": {
            "in_the_exchange": round(per_access, 2),
            "guest_read_answered_by_qemu": None if emulated is None else round(emulated / 1000, 2),
            "guest_read_forwarded_dw0": None if forwarded is None else round(forwarded / 1000, 2),
            "guest_read_forwarded_doe_status": None if status is None
            else round(status / 1000, 2),
            "server_cpu": round(server_cpu, 2),
        },
    }
    if emulated is not None and status is not None:
        out["per_config_access_us"]["vfio_user_round_trip_seen_by_qemu"] = round(
            (status - emulated) / 1000, 2)
    if floor_rtt_us:
        floor_ms = accesses * floor_rtt_us / 1000
        out["round_trip_floor_ms"] = round(floor_ms, 2)
        out["floor_definition"] = ("config accesses per exchange x the pinned C-client round "
                                   "trip to the blocking floor server")
        out["ratio_to_floor"] = round(exchange_ms / floor_ms, 2)
        out["target_ratio"] = TARGET_RATIO
        out["met"] = exchange_ms / floor_ms <= TARGET_RATIO
    if ours_rtt_us:
        out["vdev_round_trips_ms"] = round(accesses * ours_rtt_us / 1000, 2)
    if ours_rtt_us and floor_rtt_us:
        # What the guest would see with the floor server in our place: every access
        # cheaper by the difference of the two servers' pinned round trips.  The rest
        # is the guest, TCG and QEMU's own path (docs/vfio-user-qemu.md §6.5).
        with_floor = accesses * (per_access - (ours_rtt_us - floor_rtt_us)) / 1000
        out["estimate_with_floor_server_ms"] = round(with_floor, 2)
        out["ratio_to_estimate_with_floor_server"] = round(exchange_ms / with_floor, 2)
    return out
