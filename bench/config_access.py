"""Config-access round trip: `vdev serve` side by side with the blocking-server floor.

libvfio-user is not packaged for Debian or on PyPI, so the comparison server is
`bench/vfio_user_floor.c`: a minimal C server that does per request exactly
what libvfio-user's socket transport does (header recvmsg with room for fds,
body recv, one sendmsg of the reply; config space is a plain array), in its
blocking mode (`blocking`, 3 syscalls) and waiting in poll() first like an
event-driven server (`poll`, 4 syscalls).  The client is the C program of
bench/vfio_user_rtt.c, which sends and receives the way QEMU does.

Everything runs pinned to one CPU (in these VMs a round trip across vCPUs
costs an IPI each way and doubles the time), in interleaved rounds: every
round measures each server once, so load from other work on the machine hits
them alike.  The figure per server is its best round's p50; the ratio is
`vdev serve`'s over the floor's, with the per-round ratios beside it.  For each
server the JSON also gives its CPU time per request (from
/proc/PID/schedstat) and its syscalls per request (strace, when installed).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.vfio_user_c import build_c_client, compile_c
from vdev.pci.device_api import RegionIndex
from vdev.vfio_user import wire
from vdev.vfio_user.client import VfioUserClient
from vdev.vfio_user.event_loop import loop_factory
from vdev.vm.session import ServerProcess, socket_path

FLOOR_SOURCE = Path(__file__).resolve().parent / "vfio_user_floor.c"
TARGET_RATIO = 1.3
_MSG_ID = 0x4242
_CONFIG = int(RegionIndex.CONFIG)


def interpreter() -> dict[str, Any]:
    """Which Python the figures come from, and whether it was built with PGO/LTO."""
    config_args = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    return {
        "implementation": platform.python_implementation(),
        "version": platform.python_version(),
        "executable": sys.executable,
        "pgo": "--enable-optimizations" in config_args,
        "lto": "--with-lto" in config_args,
    }


def build_floor_server(workdir: Path) -> Path | str:
    """The compiled floor server, or why there is none."""
    return compile_c(FLOOR_SOURCE, workdir / "vfio_user_floor")


@dataclass
class Target:
    """A server the C client can be pointed at: `connect()` gives a socket on which
    VERSION is done, `pid` is the process that answers."""

    name: str
    pid: int
    connect: Callable[[], socket.socket]


def _pin(cpu: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {cpu})


def _request_reply(offset: int, count: int, data: bytes) -> tuple[bytes, bytes]:
    request = wire.build_message(_MSG_ID, wire.Command.REGION_READ,
                                 wire.REGION_ACCESS.pack(offset, _CONFIG, count))
    reply = wire.build_message(_MSG_ID, wire.Command.REGION_READ,
                               wire.REGION_ACCESS_DATA.pack(offset, _CONFIG, count) + data,
                               flags=wire.REPLY)
    return request, reply


def c_round_trips(client: Path, sock: socket.socket, n: int, cpu: int, offset: int,
                  data: bytes) -> list[int]:
    """`n` REGION_READs of `len(data)` config bytes at `offset` from the C client pinned
    to `cpu`; every reply is checked against `data`.  Round-trip times in ns."""
    request, reply = _request_reply(offset, len(data), data)
    fd = sock.fileno()
    proc = subprocess.run([str(client), str(fd), str(n), request.hex(), reply.hex()],
                          pass_fds=(fd,), capture_output=True, text=True, check=False,
                          preexec_fn=_pin(cpu))
    if proc.returncode != 0:
        raise RuntimeError(f"C client failed ({proc.returncode}): {proc.stderr.strip()}")
    return [int(line) for line in proc.stdout.split()]


def _cpu_ns(pid: int) -> int:
    """Time `pid` has spent on a CPU (ns, all its threads: /proc/PID/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total


def _vdev_serve(workdir: Path, loop: str) -> ServerProcess:
    sock = socket_path(f"ca-{loop}")
    return ServerProcess(["--event-loop", loop, "serve", "--socket", str(sock),
                          "--state-dir", str(workdir / "ca-state")],
                         socket=sock, log=workdir / f"ca-{loop}-server.log")


def _vdev_target(name: str, server: ServerProcess) -> Target:
    def connect() -> socket.socket:
        client = VfioUserClient(str(server.socket))
        client.negotiate()
        return client.sock

    assert server.proc is not None
    return Target(name, server.proc.pid, connect)


@contextmanager
def floor_target(exe: Path, mode: str, image: bytes, cpu: int) -> Iterator[Target]:
    """The floor server in `mode` on a socketpair, pinned to `cpu`; a fresh server per
    connection would cost a process start per round, so one serves all rounds over
    one socket (the C client leaves it open)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen([str(exe), str(theirs.fileno()), mode, image.hex()],
                            pass_fds=(theirs.fileno(),), preexec_fn=_pin(cpu))
    theirs.close()
    try:
        yield Target(f"floor_{mode}", proc.pid, lambda: ours)
    finally:
        ours.close()
        proc.wait(10)


def _syscalls(pid: int, run: Callable[[], None], n: int) -> dict[str, float] | str:
    """Syscalls per request of `pid` while `run()` makes `n` requests (strace -c)."""
    strace = shutil.which("strace")
    if strace is None:
        return "skipped: strace not installed"
    mon = subprocess.Popen([strace, "-c", "-f", "-p", str(pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # attached
    try:
        run()
        time.sleep(0.2)
    finally:
        mon.send_signal(2)
        _, err = mon.communicate(timeout=30)
    out: dict[str, float] = {}
    for line in err.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z_0-9]+)\s*$", line)
        if m and m.group(2) != "total":
            per = int(m.group(1)) / n
            if per >= 0.01:
                out[m.group(2)] = round(per, 2)
    if not out:
        return f"skipped: strace gave no counts ({err.strip()[-200:]})"
    out["total"] = round(sum(out.values()), 2)
    return out


def side_by_side(targets: list[Target], client: Path, cpu: int, rounds: int, n: int,
                 offset: int, data: bytes) -> dict[str, dict[str, Any]]:
    """Interleaved rounds on one CPU: each round gives every target `n` requests."""
    socks = {t.name: t.connect() for t in targets}
    p50s: dict[str, list[float]] = {t.name: [] for t in targets}
    cpu_us: dict[str, list[float]] = {t.name: [] for t in targets}
    for t in targets:  # warm-up: caches, lazily compiled paths
        c_round_trips(client, socks[t.name], 1000, cpu, offset, data)
    for _ in range(rounds):
        for t in targets:
            before = _cpu_ns(t.pid)
            samples = c_round_trips(client, socks[t.name], n, cpu, offset, data)
            cpu_us[t.name].append((_cpu_ns(t.pid) - before) / n / 1000)
            p50s[t.name].append(statistics.median(samples) / 1000)
    out: dict[str, dict[str, Any]] = {}
    for t in targets:
        best = min(range(rounds), key=lambda r: p50s[t.name][r])
        out[t.name] = {"p50_us": round(p50s[t.name][best], 2),
                       "round_p50s_us": [round(v, 2) for v in p50s[t.name]],
                       "server_cpu_us_per_request": round(min(cpu_us[t.name]), 2)}
    return out


def _best_cpu(exe: Path, client: Path, image: bytes) -> int:
    """The CPU where the floor runs fastest now (others' work may hold one)."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    best: dict[int, float] = {}
    for cpu in cpus:
        with floor_target(exe, "blocking", image, cpu) as floor:
            best[cpu] = statistics.median(
                c_round_trips(client, floor.connect(), 3000, cpu, 0, image[:4]))
    return min(best, key=lambda c: best[c])


def run_config_access(workdir: Path, rounds: int = 5, n: int = 20000) -> dict[str, Any]:
    client = build_c_client(workdir)
    floor = build_floor_server(workdir)
    if not isinstance(client, Path):
        return {"skipped": client}
    if not isinstance(floor, Path):
        return {"skipped": floor}
    auto_loop = loop_factory("auto")[1]
    ours = "vdev_" + auto_loop.split()[0]
    servers = {"vdev_asyncio": _vdev_serve(workdir, "asyncio")}
    if ours != "vdev_asyncio":
        servers[ours] = _vdev_serve(workdir, "auto")
    started: list[ServerProcess] = []
    load_before = os.getloadavg()
    try:
        for server in servers.values():
            started.append(server.start())
        with VfioUserClient(str(started[0].socket)) as c:
            c.negotiate()
            image = c.region_read(_CONFIG, 0, 4096)
        cpu = _best_cpu(floor, client, image)
        for server in started:
            assert server.proc is not None
            os.sched_setaffinity(server.proc.pid, {cpu})
        with floor_target(floor, "blocking", image, cpu) as blocking, \
                floor_target(floor, "poll", image, cpu) as polling:
            targets = [blocking, polling] + [_vdev_target(name, s) for name, s
                                             in zip(servers, started, strict=True)]
            reads: dict[str, Any] = {}
            for label, offset in (("config_0", 0), ("doe_status", 0x10C)):
                data = image[offset : offset + 4]
                reads[label] = side_by_side(targets, client, cpu, rounds, n, offset, data)
                floor_p50 = reads[label]["floor_blocking"]["p50_us"]
                for name in servers:
                    entry = reads[label][name]
                    entry["ratio_to_floor"] = round(entry["p50_us"] / floor_p50, 2)
                    entry["round_ratios"] = [
                        round(a / b, 2) for a, b in zip(
                            entry["round_p50s_us"],
                            reads[label]["floor_blocking"]["round_p50s_us"], strict=True)]
            syscalls: dict[str, Any] = {}
            for t in targets:
                sock = t.connect()

                def run(sock: socket.socket = sock) -> None:
                    c_round_trips(client, sock, 2000, cpu, 0, image[:4])

                syscalls[t.name] = _syscalls(t.pid, run, 2000)
    finally:
        for server in servers.values():  # the started ones, and the sockets of the rest
            server.stop()
    ratio = reads["config_0"][ours]["ratio_to_floor"]
    return {
        "method": "C client (QEMU's send/receive pattern) and server pinned to one CPU, "
                  f"{rounds} interleaved rounds of {n} REGION_READs of 4 config bytes per "
                  "server; best round's p50; floor = bench/vfio_user_floor.c",
        "interpreter": interpreter(),
        "event_loop": auto_loop,
        "cpu": cpu,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "reads": reads,
        "syscalls_per_request": syscalls,
        "ratio_to_floor": ratio,
        "target_ratio": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
    }
