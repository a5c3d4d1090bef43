"""Running a device server process: the event loop, signals, control socket.

`vdev serve` and `vdev tsm serve` differ only in the device they build;
both serve it over vfio-user until SIGINT/SIGTERM, with an optional control
socket on the same loop (its commands run between device messages).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import TypeVar

from vdev.control.core import ControlCore
from vdev.control.server import start_control
from vdev.device_api import VfioUserDevice
from vdev.vfio_user.server import serve

log = logging.getLogger("vdev")

D = TypeVar("D", bound=VfioUserDevice)


def check_socket_path(path: str) -> None:
    """AF_UNIX paths are limited to 107 bytes; say so before binding fails."""
    if len(os.fsencode(path)) > 107:
        raise SystemExit(f"vdev: socket path too long for AF_UNIX (max 107 bytes): {path}")


def serve_until_signalled(
    socket_path: str,
    make_device: Callable[[asyncio.AbstractEventLoop], D],
    *,
    control_path: str | None = None,
    make_control: Callable[[D], ControlCore] | None = None,
    name: str = "server",
) -> int:
    """Build the device on the server's loop (`make_device(loop)`), serve it,
    and return the process exit status."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        device = make_device(loop)
        control = None
        if make_control is not None:
            control = await start_control(control_path, make_control(device))
        try:
            await serve(device, socket_path, stop=stop)
        finally:
            if control is not None:
                await control.close()

    try:
        asyncio.run(main())
    except FileExistsError as exc:
        log.error("%s", exc)
        return 1
    log.info("%s stopped", name)
    return 0
