"""`make bench`: run every benchmark, print one JSON document, keep a copy.

The device server runs as its own process (`vdev serve`), as it does under
QEMU, and the in-repo vfio-user client drives it over the UNIX socket.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.doe_throughput import run_doe_throughput
from bench.socket_floor import run_socket_floor
from bench.vfio_user_bench import run_vfio_user_benchmarks

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "kernel": platform.release(),
    }


TARGETS = [
    # (name, where in the report, limit, unit)
    ("config access p50", ("vfio_user", "config_read", "p50_us"), 20.0, "us"),
    ("config access p50, C client", ("vfio_user", "config_read_c_client", "p50_us"), 20.0, "us"),
    ("config access p50, C client, same CPU",
     ("vfio_user", "config_read_c_client_pinned", "same_cpu", "p50_us"), 20.0, "us"),
    ("config access p50, C client, other CPU",
     ("vfio_user", "config_read_c_client_pinned", "cross_cpu", "p50_us"), 20.0, "us"),
    ("DOE 64 B objects", ("doe_throughput", "64B", "objects_per_s"), None, "objects/s"),
    ("DOE 4 KiB objects", ("doe_throughput", "4KiB", "objects_per_s"), None, "objects/s"),
    ("DOE 64 B objects, same CPU",
     ("doe_throughput", "same_cpu", "64B", "objects_per_s"), None, "objects/s"),
    ("DOE 4 KiB objects, same CPU",
     ("doe_throughput", "same_cpu", "4KiB", "objects_per_s"), None, "objects/s"),
    ("P-384 full handshake in-process",
     ("spdm_handshake", "in_process", "P-384/SHA-384/AES-256-GCM", "p50_ms"), 15.0, "ms"),
    ("TSM connect-to-RUN in-process", ("tsm", "connect_to_run", "total_ms"), None, "ms"),
    ("guest connect-to-RUN", ("guest", "connect_to_run_s"), 3.0, "s"),
    ("guest connect-to-RUN, ML-DSA-87 + ML-KEM-1024 (profile pqc), first connect",
     ("guest_suites", "ML-DSA-87/ML-KEM-1024 (pqc)", "connect_to_run_s"), 1.0, "s"),
    ("vdev serve RSS", ("vfio_user", "server_rss_mb"), 60.0, "MB"),
    ("config access / blocking-server floor, C client, same CPU",
     ("config_access", "ratio_to_floor"), 1.3, "x"),
    ("4 KiB DOE exchange / round-trip floor, C client, same CPU, side by side",
     ("doe_throughput", "same_cpu", "4KiB_c_client", "ratio_to_floor_side_by_side"), 1.5, "x"),
    ("4 KiB DOE exchange / round-trip floor, from the guest, same CPU",
     ("guest_doe", "ratio_to_floor"), 1.5, "x"),
    ("the same, make qemu's QEMU: inline receive + x-post-config-writes",
     ("guest_doe_qemu_series", "inline_receive_posted_config_writes", "ratio_to_floor"),
     1.5, "x"),
    ("the same, make qemu's QEMU: + x-doe-batch",
     ("guest_doe_qemu_series", "doe_batch_posted_config_writes", "ratio_to_floor"), 1.5, "x"),
    ("guest connect-to-RUN, pqc, unpinned, make qemu's QEMU with x-doe-batch",
     ("guest_suites_doe_batch", "unpinned", "connect_to_run_s"), 1.0, "s"),
]


def _doe_floor(report: dict[str, Any]) -> None:
    """The DOE throughput figures against the round-trip floor: config accesses per
    exchange x the pinned C-client round trip to the blocking floor server."""
    floor_us = _dig(report, ("config_access", "reads", "config_0", "floor_blocking", "p50_us"))
    doe = report.get("doe_throughput", {})
    same = doe.get("same_cpu", {})
    if not floor_us or not same:
        return
    for name, result in same.items():
        # The C client's entries carry their own side-by-side floor (a sum of round
        # trips measured in the same rounds); a p50-based floor understates a sum.
        if not isinstance(result, dict) or name not in doe or "ms_per_exchange" not in result:
            continue
        accesses = doe[name]["config_accesses_per_exchange"]
        floor_ms = accesses * floor_us / 1000
        result["round_trip_floor_ms"] = round(floor_ms, 3)
        result["ratio_to_floor"] = round(result["ms_per_exchange"] / floor_ms, 2)


def _dig(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = report
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _guest_doe_qemu_series(report: dict[str, Any]) -> dict[str, Any]:
    """The guest's DOE exchange again with `make qemu`'s QEMU, whose series has the
    two vfio-user changes of qemu/README.md: the waiting vCPU thread reads its own
    reply, and (opt-in) config writes are posted.  Same pinning and floor."""
    from bench.guest_doe import bench_guest_doe
    from vdev.vm.qemu_build import installed_binary

    binary = installed_binary()
    if binary is None:
        return {"skipped": "make qemu has not built the patched QEMU"}
    access = report["config_access"]
    floor = _dig(access, ("reads", "config_0", "floor_blocking", "p50_us"))
    out = {
        "inline_receive": bench_guest_doe(access.get("cpu"), floor_rtt_us=floor,
                                          qemu=binary),
        "inline_receive_posted_config_writes": bench_guest_doe(
            access.get("cpu"), floor_rtt_us=floor, qemu=binary, post_config_writes=True),
    }
    # x-doe-batch: the same guest accesses, most of them answered in QEMU; the floor
    # stays the round trips those accesses would cost (the count measured above).
    guest_accesses = _dig(out, ("inline_receive", "config_accesses_per_exchange"))
    out["doe_batch_posted_config_writes"] = bench_guest_doe(
        access.get("cpu"), floor_rtt_us=floor, qemu=binary, post_config_writes=True,
        doe_batch=True, guest_accesses=guest_accesses)
    return out


def _guest_suites_doe_batch(report: dict[str, Any]) -> dict[str, Any]:
    """The `pqc` guest connect on `make qemu`'s QEMU with x-doe-batch."""
    from bench.guest_bench import bench_guest_suites_doe_batch
    from vdev.vm.qemu_build import installed_binary

    binary = installed_binary()
    if binary is None:
        return {"skipped": "make qemu has not built the patched QEMU"}
    return bench_guest_suites_doe_batch(report["config_access"].get("cpu"), binary)


def main() -> int:
    from bench.config_access import interpreter, run_config_access
    from bench.guest_bench import bench_guest_connect, bench_guest_suites
    from bench.guest_doe import bench_guest_doe
    from bench.spdm_bench import bench_in_process, bench_socket, message_sizes
    from bench.tsm_connect import bench_connect_to_run

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "interpreter": interpreter(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="vdev-bench-") as tmp:
        report["config_access"] = run_config_access(Path(tmp))
        report["vfio_user"] = run_vfio_user_benchmarks(Path(tmp))
        report["socket_floor"] = run_socket_floor(workdir=Path(tmp))
        report["doe_throughput"] = run_doe_throughput(Path(tmp))
        report["spdm_handshake"] = {
            "in_process": bench_in_process(),
            "spdm_emu_socket": bench_socket(Path(tmp)),
            "message_sizes": message_sizes(),
        }
    tsm = bench_connect_to_run(rounds=5)
    report["tsm"] = {"connect_to_run": {
        k: (round(v * 1000, 2) if isinstance(v, float) else v) for k, v in tsm.items()
    }}
    report["tsm"]["connect_to_run"]["total_ms"] = report["tsm"]["connect_to_run"].pop("total")
    report["guest"] = bench_guest_connect()
    report["guest_suites"] = bench_guest_suites(report["config_access"].get("cpu"))
    _doe_floor(report)
    access = report["config_access"]
    report["guest_doe"] = bench_guest_doe(
        access.get("cpu"),
        floor_rtt_us=_dig(access, ("reads", "config_0", "floor_blocking", "p50_us")),
        ours_rtt_us=_dig(access, ("reads", "doe_status", "vdev_" + str(
            access.get("event_loop", "asyncio")).split()[0], "p50_us")))
    report["guest_doe_qemu_series"] = _guest_doe_qemu_series(report)
    report["guest_suites_doe_batch"] = _guest_suites_doe_batch(report)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    verdicts: list[dict[str, Any]] = []
    for name, path, limit, unit in TARGETS:
        value = _dig(report, path)
        verdicts.append({"target": name, "value": value, "limit": limit, "unit": unit,
                         "met": None if limit is None or value is None else value <= limit})
    report["targets"] = verdicts
    text = json.dumps(report, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(text + "\n")
    for v in verdicts:
        state = "n/a" if v["met"] is None else ("met" if v["met"] else "NOT met")
        bound = f" (target <= {v['limit']} {v['unit']})" if v["limit"] else ""
        print(f"{v['target']}: {v['value']} {v['unit']}{bound} {state}", file=sys.stderr)
    for line in _summary(report):
        print(line, file=sys.stderr)
    return 0


def _summary(report: dict[str, Any]) -> list[str]:
    """The ratio and breakdown lines a reader wants without opening the JSON."""
    lines = []
    access = report.get("config_access", {})
    for label, reads in access.get("reads", {}).items():
        floor = reads["floor_blocking"]["p50_us"]
        ours = ", ".join(f"{name} {r['p50_us']} us ({r['ratio_to_floor']}x)"
                         for name, r in reads.items() if name.startswith("vdev_"))
        lines.append(f"config read {label}, CPU {access.get('cpu')}: floor {floor} us, {ours}")
    doe = report.get("guest_doe", {})
    per = doe.get("per_config_access_us")
    if per:
        lines.append(
            f"guest 4 KiB DOE exchange: {doe['exchange_ms_p50']} ms = "
            f"{doe['config_accesses_per_exchange']} config accesses x {per['in_the_exchange']} us"
            f"; floor {doe.get('round_trip_floor_ms')} ms ({doe.get('ratio_to_floor')}x), "
            f"with the floor server in our place ~{doe.get('estimate_with_floor_server_ms')} ms "
            f"({doe.get('ratio_to_estimate_with_floor_server')}x); "
            f"per access: guest+QEMU without vfio-user {per['guest_read_answered_by_qemu']} us, "
            f"QEMU's vfio-user round trip to our server "
            f"{per.get('vfio_user_round_trip_seen_by_qemu')} us, our server's CPU "
            f"{per['server_cpu']} us")
    for name, run in report.get("guest_doe_qemu_series", {}).items():
        if isinstance(run, dict) and "exchange_ms_p50" in run:
            lines.append(f"guest 4 KiB DOE exchange, make qemu's QEMU, {name}: "
                         f"{run['exchange_ms_p50']} ms ({run.get('ratio_to_floor')}x the floor)")
    return lines


def run() -> int:
    """main() under `make bench`: Ctrl-C or SIGTERM stops it through an exception, so
    every server, QEMU and temporary directory a benchmark started goes with it, and
    the interruption is one line."""
    from vdev.cli import Terminated, interrupted_status, stopped_by_signals

    try:
        with stopped_by_signals():
            return main()
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"\nmake bench: {what}; servers and QEMU stopped", file=sys.stderr)
        return interrupted_status(exc)


if __name__ == "__main__":
    sys.exit(run())
