"""asyncio adapter of the control socket: a UNIX stream server on the caller's loop.

Runs on the same event loop as the device (`vdev serve` and friends), so a command
runs between two device messages and never needs a lock; commands are short and
synchronous, so they never block the loop for longer than one device step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat

from vdev.control.core import ControlCore

log = logging.getLogger("vdev.control")

MAX_LINE = 1 << 16  # one request line; anything longer is refused and the client dropped


class ControlServer:
    def __init__(self, path: str, core: ControlCore) -> None:
        self.path = path
        self.core = core
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if len(os.fsencode(self.path)) > 107:
            raise OSError(f"control socket path too long for AF_UNIX: {self.path}")
        _remove_stale_socket(self.path)
        self._server = await asyncio.start_unix_server(self._client, self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o600)  # reset and fault injection are for the owner only
        log.info("control socket on %s (%s)", self.path, self.core.role)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    line = exc.partial  # a last request without newline still counts
                    if not line.strip():
                        return
                except asyncio.LimitOverrunError:
                    writer.write(b'{"ok":false,"error":"request line longer than %d bytes"}\n'
                                 % MAX_LINE)
                    await writer.drain()
                    return
                if line.strip():
                    writer.write(self.core.handle_line(line))
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _remove_stale_socket(path: str) -> None:
    """Replace a socket nobody listens on; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # stale: its server is gone
    else:
        raise FileExistsError(f"{path}: another server is listening there")
    finally:
        probe.close()


async def start_control(path: str | None, core: ControlCore) -> ControlServer | None:
    """Start a control server when `path` is given (the `--control` option)."""
    if not path:
        return None
    server = ControlServer(path, core)
    try:
        await server.start()
    except OSError as exc:  # FileExistsError included: a bad --control fails the start
        raise SystemExit(f"vdev: control socket {path}: {exc}") from None
    return server
