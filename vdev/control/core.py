"""Sans-IO request dispatch of the control socket (protocol: `vdev.control`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("vdev.control")

Handler = Callable[[dict[str, Any]], Any]
"""A command: its ``args`` object -> a JSON-serialisable result."""


class CommandError(Exception):
    """A request a command refuses; the message goes back as ``error``."""


@dataclass(frozen=True)
class Command:
    handler: Handler
    help: str


class ControlCore:
    """Dispatches control requests to named commands; never raises."""

    def __init__(self, commands: Mapping[str, Command], role: str) -> None:
        self.role = role
        self.commands = dict(commands)
        self.commands.setdefault("help", Command(self._help, "list the commands"))

    def _help(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"role": self.role,
                "commands": {name: c.help for name, c in sorted(self.commands.items())}}

    def handle(self, request: Any) -> dict[str, Any]:
        """One request object -> one response object (see `vdev.control`)."""
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        response: dict[str, Any] = {}
        if "id" in request:
            response["id"] = request["id"]
        cmd = request.get("cmd")
        args = request.get("args", {})
        unknown = sorted(set(request) - {"cmd", "args", "id"})
        if not isinstance(cmd, str):
            error = "missing \"cmd\" (a string)"
        elif cmd not in self.commands:
            error = f"unknown command {cmd!r} (commands: {', '.join(sorted(self.commands))})"
        elif not isinstance(args, dict):
            error = "\"args\" must be a JSON object"
        elif unknown:
            error = f"unknown request field(s) {', '.join(unknown)}"
        else:
            try:
                result = self.commands[cmd].handler(args)
                # Serialise here, so a result that is not JSON fails this request only.
                json.dumps(result)
            except CommandError as exc:
                error = f"{cmd}: {exc}"
            except Exception as exc:  # a control request must never take the device down
                log.exception("control command %s failed", cmd)
                error = f"{cmd}: internal error: {type(exc).__name__}: {exc}"
            else:
                response.update(ok=True, result=result)
                return response
        response.update(ok=False, error=error)
        return response

    def handle_line(self, line: bytes) -> bytes:
        """One request line -> one response line (newline-terminated)."""
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, ValueError) as exc:
            response: dict[str, Any] = {"ok": False, "error": f"not JSON: {exc}"}
        else:
            response = self.handle(request)
        return json.dumps(response, separators=(",", ":")).encode() + b"\n"


def expect_args(args: dict[str, Any], allowed: set[str]) -> None:
    """Refuse arguments a command does not know (typos should not pass silently)."""
    extra = sorted(set(args) - allowed)
    if extra:
        raise CommandError(f"unknown argument(s) {', '.join(extra)}"
                           + (f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""))
