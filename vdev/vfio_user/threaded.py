"""Run a vfio-user server on its own event loop in a background thread.

For tests, benchmarks and tools that want a live server in-process while the
calling thread drives it with the blocking client.  The socket lives in a
short private directory (AF_UNIX paths are limited to 107 bytes).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from vdev.pci.device_api import VfioUserDevice
from vdev.vfio_user import event_loop
from vdev.vfio_user.server import VfioUserServer

D = TypeVar("D", bound=VfioUserDevice)


@dataclass
class ThreadedServer(Generic[D]):
    device: D
    path: str
    server: VfioUserServer
    loop: asyncio.AbstractEventLoop


@contextmanager
def serve_in_thread(
    make_device: Callable[[asyncio.AbstractEventLoop], D],
    *,
    name: str = "dev",
    start_timeout: float = 5.0,
    loop_choice: str | None = None,
    **server_args: Any,
) -> Iterator[ThreadedServer[D]]:
    """Serve `make_device(loop)` (the loop is the server's, for devices that
    schedule work on it) on the event loop `loop_choice` (vdev.vfio_user.event_loop;
    default as `vdev serve`).  `server_args` go to VfioUserServer."""
    tmpdir = tempfile.mkdtemp(prefix="vu-", dir="/tmp")
    path = f"{tmpdir}/{name}.sock"
    loop = event_loop.loop_factory(loop_choice)[0]()
    dev = make_device(loop)
    srv = VfioUserServer(dev, path, **server_args)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(srv.start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(srv.close())
        loop.close()

    thread = threading.Thread(target=run, name=f"vfio-user-{name}", daemon=True)
    thread.start()
    if not started.wait(start_timeout):
        raise RuntimeError(f"vfio-user server on {path} did not start")
    try:
        yield ThreadedServer(dev, path, srv, loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        shutil.rmtree(tmpdir, ignore_errors=True)
