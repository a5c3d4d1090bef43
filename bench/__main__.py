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
    ("vdev serve RSS", ("vfio_user", "server_rss_mb"), 60.0, "MB"),
]


def _dig(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = report
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def main() -> int:
    from bench.guest_bench import bench_guest_connect
    from bench.spdm_bench import bench_in_process, bench_socket
    from bench.tsm_connect import bench_connect_to_run

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix="vdev-bench-") as tmp:
        report["vfio_user"] = run_vfio_user_benchmarks(Path(tmp))
        report["socket_floor"] = run_socket_floor(workdir=Path(tmp))
        report["doe_throughput"] = run_doe_throughput(Path(tmp))
        report["spdm_handshake"] = {
            "in_process": bench_in_process(),
            "spdm_emu_socket": bench_socket(Path(tmp)),
        }
    tsm = bench_connect_to_run(rounds=5)
    report["tsm"] = {"connect_to_run": {
        k: (round(v * 1000, 2) if isinstance(v, float) else v) for k, v in tsm.items()
    }}
    report["tsm"]["connect_to_run"]["total_ms"] = report["tsm"]["connect_to_run"].pop("total")
    report["guest"] = bench_guest_connect()
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
