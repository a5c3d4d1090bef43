"""A small synchronous QMP client (QEMU Machine Protocol, docs/interop/qmp-spec).

QMP is line-delimited JSON over a socket: the server greets with
`{"QMP": {...}}`, the client leaves negotiation mode with
`qmp_capabilities`, then each `{"execute": ..., "id": ...}` gets exactly one
`{"return": ...}` or `{"error": {"class", "desc"}}` carrying the same id.
Asynchronous `{"event": ...}` messages may arrive at any time; they are kept
in `events`.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class QmpError(RuntimeError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QmpConnectionError(RuntimeError):
    """The QMP socket could not be used (QEMU gone, not QMP, timeout)."""


class QmpClient:
    """One QMP connection on a UNIX socket; use as a context manager."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] = {}
        self._sock: socket.socket | None = None
        self._buf = b""
        self._next_id = 0

    def __enter__(self) -> QmpClient:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise QmpConnectionError(f"cannot connect to QMP at {self.path}: {exc}") from None
        self._sock = sock
        greeting = self._receive()
        if "QMP" not in greeting:
            self.close()
            raise QmpConnectionError(f"{self.path} did not greet with QMP")
        self.greeting = greeting["QMP"]
        self.execute("qmp_capabilities")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run `command`; its `return` value, or QmpError."""
        if self._sock is None:
            raise QmpConnectionError("QMP connection is closed")
        self._next_id += 1
        ident = f"vdev-{self._next_id}"
        msg: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise QmpConnectionError(f"QMP send failed: {exc}") from None
        while True:
            reply = self._receive()
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != ident:
                raise QmpConnectionError(f"QMP reply for another command: {reply}")
            if "error" in reply:
                err = reply["error"]
                raise QmpError(command, str(err.get("class", "")), str(err.get("desc", "")))
            return reply.get("return")

    def _receive(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise QmpConnectionError(f"no QMP answer within {self.timeout:.0f} s") from None
            except OSError as exc:
                raise QmpConnectionError(f"QMP receive failed: {exc}") from None
            if not chunk:
                raise QmpConnectionError("QEMU closed the QMP connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            msg = json.loads(line)
        except ValueError:
            raise QmpConnectionError(f"not JSON on the QMP socket: {line[:80]!r}") from None
        if not isinstance(msg, dict):
            raise QmpConnectionError(f"unexpected QMP message: {msg!r}")
        return msg
