"""The transport floor: AF_UNIX ping-pong between two Python processes.

No vfio-user code at all, just the syscalls a REGION_READ round trip needs,
so `make bench` can show how much of the config-access latency is ours:

* `blocking_1x1`: one send and one recv per side, both blocking.
* `asyncio_vfio_user_shape`: what our stack does per 4-byte REGION_READ: the
  client sends 32 bytes and reads the 36-byte reply as header then body with
  `recvmsg`; the server waits in an asyncio loop (`add_reader`), reads header
  then body with `recvmsg` and replies with one `send`.
* `c_client_asyncio_vfio_user_shape` / `c_client_blocking`: the asyncio and the
  blocking server, with the C client of bench/vfio_user_rtt.c (QEMU's side is C
  too) instead of Python, both on one CPU; their difference is what asyncio's
  wake-up costs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.vfio_user_bench import _percentiles
from bench.vfio_user_c import build_c_client

_CMSG = socket.CMSG_SPACE(16 * 4)
_FLAGS = socket.MSG_CMSG_CLOEXEC
_REQ = bytes(32)
_REP = bytes(36)


def _blocking_server(sock: socket.socket) -> None:
    while sock.recv(4096):
        sock.send(_REP)


def _asyncio_server(sock: socket.socket) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        done: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            try:
                head, _, _, _ = sock.recvmsg(16, _CMSG, _FLAGS)
            except BlockingIOError:
                return
            if not head:
                loop.remove_reader(sock.fileno())
                done.set_result(None)
                return
            sock.recvmsg(16, _CMSG, _FLAGS)
            sock.send(_REP)

        loop.add_reader(sock.fileno(), on_readable)
        await done

    asyncio.run(main())


def _ping_pong(shaped: bool, n: int) -> list[int]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        a.close()
        try:
            (_asyncio_server if shaped else _blocking_server)(b)
        finally:
            os._exit(0)
    b.close()
    samples = []
    try:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            a.send(_REQ)
            if shaped:
                a.recvmsg(16, _CMSG, _FLAGS)
                a.recvmsg(20, _CMSG, _FLAGS)
            else:
                a.recv(4096)
            samples.append(time.perf_counter_ns() - t0)
    finally:
        a.close()
        os.waitpid(pid, 0)
    return samples


def _c_ping_pong(exe: Path, n: int, shaped: bool, cpu: int) -> list[int]:
    """The C client (bench/vfio_user_rtt.c) against one of the servers above, both
    pinned to `cpu` (what vfio_user_c's `same_cpu` figure is compared with)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        a.close()
        try:
            os.sched_setaffinity(0, {cpu})
            (_asyncio_server if shaped else _blocking_server)(b)
        finally:
            os._exit(0)
    b.close()
    try:
        proc = subprocess.run([str(exe), str(a.fileno()), str(n), _REQ.hex(), _REP.hex()],
                              pass_fds=(a.fileno(),), capture_output=True, text=True,
                              check=True, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    finally:
        a.close()
        os.waitpid(pid, 0)
    return [int(line) for line in proc.stdout.split()]


def run_socket_floor(n: int = 20000, warmup: int = 2000,
                     workdir: Path | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "blocking_1x1": _percentiles(_ping_pong(False, n + warmup)[warmup:]),
        "asyncio_vfio_user_shape": _percentiles(_ping_pong(True, n + warmup)[warmup:]),
    }
    exe = build_c_client(workdir) if workdir is not None else "skipped: no work directory"
    cpus = sorted(os.sched_getaffinity(0))[:2]
    for name, shaped in (("c_client_asyncio_vfio_user_shape", True),
                         ("c_client_blocking", False)):
        if not isinstance(exe, Path):
            out[name] = {"skipped": exe}
            continue
        # Best of the CPUs, as for the pinned config reads: others' work may hold one.
        tried = [dict(_percentiles(_c_ping_pong(exe, n + warmup, shaped, c)[warmup:]), cpu=c)
                 for c in cpus]
        out[name] = min(tried, key=lambda r: r["p50_us"])
    return out
