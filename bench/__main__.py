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


def main() -> int:
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix="vdev-bench-") as tmp:
        report["vfio_user"] = run_vfio_user_benchmarks(Path(tmp))
    report["socket_floor"] = run_socket_floor()
    text = json.dumps(report, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(text + "\n")
    targets_ok = report["vfio_user"]["config_read"]["p50_us"] <= 20.0
    print(f"config read p50 target (<= 20 us): {'met' if targets_ok else 'NOT met'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
