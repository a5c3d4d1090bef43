"""Config-space REGION_READ round trips from a C client (bench/vfio_user_rtt.c).

QEMU, a C program, is the real client.  This measures the server and the kernel
without the in-repo Python client's own cost: the C program is compiled at bench
time into a temporary directory (skipped, with the reason in the JSON, when there
is no C compiler) and given a connected socket on which Python has already
negotiated VERSION, the request bytes (built from the declarations in
vdev/vfio_user/wire.py) and the reply it must get back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from vdev.pci.device_api import RegionIndex
from vdev.vfio_user import wire
from vdev.vfio_user.client import VfioUserClient

SOURCE = Path(__file__).resolve().parent / "vfio_user_rtt.c"
_MSG_ID = 0x4242


def compile_c(source: Path, exe: Path) -> Path | str:
    """`source` compiled with -O2 to `exe`, or (a string) why the benchmark that
    needs it is skipped."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return "skipped: no C compiler (cc, gcc or clang) on PATH"
    proc = subprocess.run([cc, "-O2", "-o", str(exe), str(source)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        return f"skipped: {Path(cc).name} failed: {proc.stderr.strip()[:200]}"
    return exe


def build_c_client(workdir: Path) -> Path | str:
    """The compiled client, or why there is none."""
    return compile_c(SOURCE, workdir / "vfio_user_rtt")


def c_config_read(exe: Path, socket_path: str, n: int, warmup: int,
                  offset: int = 0, count: int = 4, cpus: set[int] | None = None) -> list[int]:
    """Round-trip times (ns) of `n` REGION_READs of config space from the C client,
    pinned to `cpus` when given."""
    cfg = int(RegionIndex.CONFIG)
    with VfioUserClient(socket_path) as client:
        client.negotiate()
        data = client.region_read(cfg, offset, count)
        request = wire.build_message(_MSG_ID, wire.Command.REGION_READ,
                                     wire.REGION_ACCESS.pack(offset, cfg, count))
        reply = wire.build_message(_MSG_ID, wire.Command.REGION_READ,
                                   wire.REGION_ACCESS_DATA.pack(offset, cfg, count) + data,
                                   flags=wire.REPLY)
        fd = client.sock.fileno()
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        proc = subprocess.run([str(exe), str(fd), str(n + warmup), request.hex(), reply.hex()],
                              pass_fds=(fd,), capture_output=True, text=True, check=False,
                              preexec_fn=pin)
    if proc.returncode != 0:
        raise RuntimeError(f"C client failed ({proc.returncode}): {proc.stderr.strip()}")
    return [int(line) for line in proc.stdout.split()][warmup:]


def pinned_c_config_reads(exe: Path, socket_path: str, server_pid: int,
                          n: int) -> dict[str, Any]:
    """The C client's round trip with client and server pinned to the same CPU and to
    two different CPUs.  In a VM the two differ by a factor of two or more (waking a
    process on another, halted vCPU costs an IPI each way), and the unpinned figure is
    whichever of the two the scheduler happens to choose.  Other work on the machine
    may hold one CPU, so every CPU (pair) is tried and the best p50 is kept."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"skipped": "fewer than two CPUs"}
    saved = os.sched_getaffinity(server_pid)
    placements = {
        "same_cpu": [(c, c) for c in cpus[:2]],
        "cross_cpu": [(cpus[0], cpus[1]), (cpus[1], cpus[0])],
    }
    out: dict[str, Any] = {}
    try:
        for name, pairs in placements.items():
            tried = []
            for server_cpu, client_cpu in pairs:
                os.sched_setaffinity(server_pid, {server_cpu})
                result = _percentiles(c_config_read(exe, socket_path, n, 1000,
                                                    cpus={client_cpu}))
                result["server_cpu"], result["client_cpu"] = server_cpu, client_cpu
                tried.append(result)
            out[name] = min(tried, key=lambda r: r["p50_us"])
    finally:
        os.sched_setaffinity(server_pid, saved)
    return out


def _percentiles(samples_ns: list[int]) -> dict[str, Any]:
    from bench.vfio_user_bench import _percentiles as percentiles  # import cycle

    return percentiles(samples_ns)
