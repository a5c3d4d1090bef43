"""One control socket for every device of a `vdev serve` process (`--socket` repeated).

A request names its device with a top-level ``"device"`` field: the device's index
(the order of ``--socket`` on the command line, from 0) or its socket path.  The
response says which device answered::

    {"cmd": "tdi", "device": 1}
    {"ok": true, "device": 1, "result": [...]}

With one device ``"device"`` may be left out (so a single-device server answers
exactly as before, plus the ``"device": 0`` field).  With several, a device command
without it is refused: answering for "some" device would mix them up.

Commands of the set itself: ``devices`` (every device: index, label, socket, client,
SPDM sessions, TDI and IDE states, in one object each) and ``help``.  Every other
command is the device's own (`vdev.control.endpoint`) and sees only that device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from vdev.control.core import Command, ControlCore, expect_args
from vdev.control.endpoint import DeviceControl

SET_COMMANDS = ("devices", "help")


@dataclass
class ServedDevice:
    """One device of the process: its commands, and where QEMU reaches it."""

    control: DeviceControl
    socket: str
    label: str

    def __post_init__(self) -> None:
        self.core = self.control.core()

    def summary(self) -> dict[str, Any]:
        c = self.control
        return {
            "label": self.label,
            "socket": self.socket,
            "client_connected": bool(c.transport().get("client_connected")),
            "spdm_sessions": [{"session_id": s["session_id"], "state": s["state"]}
                              for s in c.sessions({})["sessions"]],
            "tdi": [{"interface_id": t["interface_id"], "state": t["state"]}
                    for t in c.tdi({})],
            "ide": [{"stream_id": s["stream_id"], "state": s["state"]} for s in c.ide({})],
        }


class DeviceSet(ControlCore):
    """Routes each request to the device it names (see the module docstring).
    `enter(device)`: a context to run that device's commands in (the process's log
    label), or None."""

    def __init__(
        self,
        devices: Sequence[ServedDevice],
        *,
        enter: Callable[[ServedDevice], AbstractContextManager[None]] | None = None,
    ) -> None:
        if not devices:
            raise ValueError("a device set needs a device")
        super().__init__({"devices": Command(
            self._devices, "every device of this process: index, socket, client, "
            "SPDM sessions, TDI and IDE states")}, role="device")
        self.devices = list(devices)
        self.enter = enter

    def _help(self, args: dict[str, Any]) -> dict[str, Any]:
        commands = {name: c.help for name, c in self.devices[0].core.commands.items()}
        commands.update({name: c.help for name, c in self.commands.items()})
        return {
            "role": self.role,
            "devices": len(self.devices),
            "device_field": "\"device\": index (0.." f"{len(self.devices) - 1}) or socket path"
                            + ("; required for device commands" if len(self.devices) > 1
                               else "; optional"),
            "commands": dict(sorted(commands.items())),
        }

    def _devices(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        expect_args(args, set())
        out = []
        for i, d in enumerate(self.devices):
            with self._entered(d):
                out.append({"device": i, **d.summary()})
        return out

    def _entered(self, d: ServedDevice) -> AbstractContextManager[None]:
        return self.enter(d) if self.enter is not None else contextlib.nullcontext()

    def _index(self, which: Any) -> int | str:
        """The index `which` names, or the reason it names none."""
        n = len(self.devices)
        if isinstance(which, int) and not isinstance(which, bool):
            if 0 <= which < n:
                return which
            return f"device {which}: this server has device{'s 0..' if n > 1 else ' '}{n - 1}"
        if isinstance(which, str):
            for i, d in enumerate(self.devices):
                if which in (d.socket, d.label):
                    return i
            sockets = ", ".join(d.socket for d in self.devices)
            return f"device {which!r}: no device has that socket (sockets: {sockets})"
        return "\"device\" must be an index or a socket path"

    def handle(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            return super().handle(request)
        cmd = request.get("cmd")
        if "device" not in request:
            if cmd in SET_COMMANDS or not isinstance(cmd, str):
                return super().handle(request)
            if len(self.devices) > 1 and cmd in self.devices[0].core.commands:
                return _error(request, f"{cmd}: this server has {len(self.devices)} devices: "
                              "say which with \"device\": 0.."
                              f"{len(self.devices) - 1} (vdev ctl --device N), or ask "
                              "\"devices\" for all of them")
            if cmd not in self.devices[0].core.commands:
                known = sorted({*self.commands, *self.devices[0].core.commands})
                return _error(request, f"unknown command {cmd!r} (commands: "
                              f"{', '.join(known)})")
            index = 0
        else:
            found = self._index(request["device"])
            if isinstance(found, str):
                return _error(request, found)
            index = found
        inner = {k: v for k, v in request.items() if k != "device"}
        if cmd in SET_COMMANDS:
            response = super().handle(inner)
            if cmd == "devices" and response.get("ok"):
                response["result"] = [response["result"][index]]
        else:
            d = self.devices[index]
            with self._entered(d):
                response = d.core.handle(inner)
        out: dict[str, Any] = {"id": response.pop("id")} if "id" in response else {}
        out.update(ok=response.pop("ok"), device=index, **response)
        return out


def _error(request: dict[str, Any], error: str) -> dict[str, Any]:
    out: dict[str, Any] = {"id": request["id"]} if "id" in request else {}
    out.update(ok=False, error=error)
    return out
