"""Running a device server process: the event loop, signals, control socket.

`vdev serve` and `vdev tsm serve` differ only in the devices they build;
both serve them over vfio-user until SIGINT/SIGTERM, with an optional control
socket on the same loop (its commands run between device messages).

`vdev serve --socket A --socket B` serves several independent devices from one
process, one vfio-user socket each, all on one event loop.  Each device's
servers and callbacks run in their own `contextvars` context holding the
device's label ("device0", "device1", ...), so every log line written while a
device works says which device it is (`DeviceLabelFilter`), including the
lines of deferred DOE responses (asyncio copies the context into every
callback it schedules).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from spdm import messages as spdm_messages
from vdev.control.core import ControlCore
from vdev.control.server import start_control
from vdev.pci.device_api import VfioUserDevice
from vdev.vfio_user import event_loop
from vdev.vfio_user.server import VfioUserServer

log = logging.getLogger("vdev")

D = TypeVar("D", bound=VfioUserDevice)

DEVICE_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "vdev_device_label", default=None)
"""The device the current code works for, in a multi-device process (else None)."""


def device_label_of(index: int) -> str:
    """The name device `index` goes by in logs and traces of a multi-device process."""
    return f"device{index}"


@contextlib.contextmanager
def device_label(label: str | None) -> Iterator[None]:
    """Run a block as device `label` (its log lines are tagged)."""
    token = DEVICE_LABEL.set(label)
    try:
        yield
    finally:
        DEVICE_LABEL.reset(token)


class DeviceLabelFilter(logging.Filter):
    """Prefixes "[deviceN] " to every record logged while a device's context is current.
    Installed on the root handlers of a multi-device process only."""

    def filter(self, record: logging.LogRecord) -> bool:
        label = DEVICE_LABEL.get()
        if label and not getattr(record, "vdev_device", None):
            record.vdev_device = label
            record.msg = f"[{label}] {record.msg}"
        return True


_LABEL_FILTER = DeviceLabelFilter()


def install_label_filter() -> None:
    """Tag log lines with the current device label from now on (idempotent; the
    filter does nothing while no label is set)."""
    for h in logging.getLogger().handlers:
        h.addFilter(_LABEL_FILTER)


def check_socket_path(path: str) -> None:
    """AF_UNIX paths are limited to 107 bytes; say so before binding fails."""
    if len(os.fsencode(path)) > 107:
        raise SystemExit(f"vdev: socket path too long for AF_UNIX (max 107 bytes): {path}")


def check_socket_paths(paths: Sequence[str], control: str | None = None) -> None:
    """Every `--socket` usable, none given twice, the control socket not among them."""
    for path in paths:
        check_socket_path(path)
    real = [os.path.abspath(p) for p in paths]
    dup = sorted({p for p in real if real.count(p) > 1})
    if dup:
        raise SystemExit(f"vdev: --socket given more than once: {', '.join(dup)}")
    if control is not None and os.path.abspath(control) in real:
        raise SystemExit(f"vdev: --control {control} is also a --socket")


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
    return serve_devices_until_signalled(
        [socket_path], lambda loop: [make_device(loop)], control_path=control_path,
        make_control=None if make_control is None else (lambda devs: make_control(devs[0])),
        name=name)


def serve_devices_until_signalled(
    socket_paths: Sequence[str],
    make_devices: Callable[[asyncio.AbstractEventLoop], Sequence[D]],
    *,
    control_path: str | None = None,
    make_control: Callable[[Sequence[D]], ControlCore] | None = None,
    labels: Sequence[str] | None = None,
    name: str = "server",
) -> int:
    """Serve device i of `make_devices(loop)` on `socket_paths[i]`, all on one event
    loop, until SIGINT/SIGTERM; one control socket for all of them.  With `labels`
    (one per device), device i's servers run in a context labelled `labels[i]` and
    log lines say which device wrote them.  Returns the process exit status."""
    if labels is not None and len(labels) != len(socket_paths):
        raise ValueError("one label per socket")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        devices = make_devices(loop)
        spdm_messages.compile_declarations()  # before listening: not in the first connect
        if len(devices) != len(socket_paths):
            raise ValueError(f"{len(devices)} devices for {len(socket_paths)} sockets")
        control = None
        if make_control is not None:
            control = await start_control(control_path, make_control(devices))
        servers: list[VfioUserServer] = []
        try:
            for i, (device, path) in enumerate(zip(devices, socket_paths, strict=True)):
                server = VfioUserServer(device, path)
                ctx = contextvars.copy_context()
                if labels is not None:
                    ctx.run(DEVICE_LABEL.set, labels[i])
                # The listener's and every client's reader callbacks copy this context.
                await asyncio.create_task(server.start(), context=ctx)
                servers.append(server)
            await stop.wait()
        finally:
            for server in reversed(servers):
                await server.close()
            if control is not None:
                await control.close()

    if labels is not None:
        install_label_filter()
    try:
        event_loop.run(main())
    except OSError as exc:  # a socket in use (FileExistsError), a bad directory, ...
        log.error("%s", exc)
        return 1
    log.info("%s stopped", name)
    return 0
