"""Blocking client of the control socket (used by `vdev ctl` and tests)."""

from __future__ import annotations

import json
import socket
from typing import Any


class ControlClient:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request, return its response object (``ok`` / ``result`` / ``error``)."""
        msg: dict[str, Any] = {"cmd": cmd}
        if args:
            msg["args"] = args
        return self.raw(json.dumps(msg).encode() + b"\n")

    def raw(self, line: bytes) -> dict[str, Any]:
        self.sock.sendall(line)
        while b"\n" not in self._buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("control socket closed before the response")
            self._buf += chunk
        reply, self._buf = self._buf.split(b"\n", 1)
        response: dict[str, Any] = json.loads(reply)
        return response


def call(path: str, cmd: str, args: dict[str, Any] | None = None,
         timeout: float = 10.0) -> dict[str, Any]:
    """One request on a fresh connection."""
    with ControlClient(path, timeout) as client:
        return client.request(cmd, args)
