"""Backends for the mailbox device that are not the TSM model.

The interface (`TsmBackend`) and the types that cross it (`DoeRequest`, `Done`, `Op`,
`TargetFunction`, `LockBar`) are declared once in tsm/mailbox_protocol.py; the real TSM
model plugs in as `tsm.mailbox_backend.OperationBackend`.  Here:

`ScriptedBackend` replays fixed request lists (tests, `vdev tsm serve --scripted`);
`EchoBackend` and `FailingBackend` are small fault helpers.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdisp.codes import TdiState
from tsm.mailbox_protocol import (
    TSM_OPS,
    Action,
    DoeRequest,
    Done,
    LockBar,
    Op,
    TargetFunction,
)

# ---- scripted backend -----------------------------------------------------


@dataclass(frozen=True)
class Script:
    """One scripted run of an operation: DOE requests in order, then `done`."""

    requests: tuple[DoeRequest, ...] = ()
    done: Done = Done(0, "scripted operation complete")


@dataclass(frozen=True)
class Exchange:
    """What the scripted backend sent and what came back."""

    op: Op
    target: TargetFunction
    index: int
    request: DoeRequest
    rc: int
    response: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op.name.lower(), "target": str(self.target), "index": self.index,
            "type": self.request.doe_type, "request": self.request.payload.hex(),
            "rc": self.rc, "response": self.response.hex(),
        }


@dataclass
class _Run:
    op: Op
    target: TargetFunction
    script: Script
    next_index: int = 0


@dataclass
class ScriptedBackend:
    """Replays `scripts[op]`: the n-th start of an op uses the n-th script, the last repeats.

    A transport error ends the run with Done(rc, ...).  Every exchange is kept
    in `exchanges` and passed to `on_exchange`; every finished operation is
    appended to `results`.
    """

    scripts: Mapping[Op, Sequence[Script]]
    on_exchange: Callable[[Exchange], None] | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    results: list[tuple[Op, TargetFunction, Done]] = field(default_factory=list)
    #: every start that carried BAR records: (op, target, records)
    mmio_seen: list[tuple[Op, TargetFunction, tuple[LockBar, ...]]] = field(
        default_factory=list)
    aborted: int = 0
    _starts: dict[Op, int] = field(default_factory=dict)
    _run: _Run | None = None

    def start(self, op: Op, target: TargetFunction, *, mmio: Sequence[LockBar] = ()) -> Action:
        if self._run is not None:
            self.abort()
        if mmio:
            self.mmio_seen.append((op, target, tuple(mmio)))
        scripts = self.scripts.get(op, ())
        if not scripts:
            return self._finish(op, target, Done(-errno.EOPNOTSUPP, f"no script for {op.name}"))
        n = self._starts.get(op, 0)
        self._starts[op] = n + 1
        self._run = _Run(op, target, scripts[min(n, len(scripts) - 1)])
        return self._next()

    def doe_response(self, payload: bytes) -> Action:
        return self._record(0, payload)

    def transport_error(self, error: int) -> Action:
        return self._record(error, b"")

    def abort(self) -> None:
        if self._run is not None:
            self.aborted += 1
        self._run = None

    def _record(self, rc: int, payload: bytes) -> Action:
        run = self._run
        if run is None or run.next_index == 0:
            raise RuntimeError("DOE response with no request outstanding")
        index = run.next_index - 1
        ex = Exchange(run.op, run.target, index, run.script.requests[index], rc, payload)
        self.exchanges.append(ex)
        if self.on_exchange is not None:
            self.on_exchange(ex)
        if rc < 0:
            return self._finish(run.op, run.target,
                                Done(rc, f"DOE exchange {index} failed in transport ({rc})"))
        return self._next()

    def _next(self) -> Action:
        run = self._run
        assert run is not None
        if run.next_index < len(run.script.requests):
            run.next_index += 1
            return run.script.requests[run.next_index - 1]
        return self._finish(run.op, run.target, run.script.done)

    def _finish(self, op: Op, target: TargetFunction, done: Done) -> Done:
        self._run = None
        self.results.append((op, target, done))
        return done


def _done_from_json(obj: Mapping[str, Any]) -> Done:
    """`{"status", "reason", "data_hex" | "data_text", "tdi_state"}`, all optional;
    `tdi_state` is a TDISP state name (what the mailbox's TDI_STATE register reads)."""
    data = bytes.fromhex(obj.get("data_hex", "")) + obj.get("data_text", "").encode()
    state = obj.get("tdi_state")
    if state is not None and state not in TdiState.__members__:
        raise ValueError(f"tdi_state {state!r} is not one of {', '.join(TdiState.__members__)}")
    return Done(int(obj.get("status", 0)), str(obj.get("reason", "scripted")), data or None,
                tdi_state=TdiState[state] if state is not None else None)


def load_scripts(path: str | Path) -> dict[Op, list[Script]]:
    """A script file: JSON {op name: [run, ...]}, each run
    {"requests": [{"type": 1, "hex": "1084...", "delay_us": 0}],
     "done": {"status": 0, "reason": "...", "data_hex": "..", "data_text": "..",
              "tdi_state": "CONFIG_LOCKED"}}.
    A single run may be given without the list."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of op name -> runs")
    out: dict[Op, list[Script]] = {}
    for name, runs in raw.items():
        try:
            op = Op[name.upper()]
        except KeyError:
            raise ValueError(f"{path}: unknown operation {name!r}") from None
        if op not in TSM_OPS:
            raise ValueError(f"{path}: {name!r} is not a TSM operation")
        out[op] = [
            Script(
                tuple(DoeRequest(int(r["type"]), bytes.fromhex(r["hex"]),
                                 int(r.get("delay_us", 0)))
                      for r in run.get("requests", ())),
                _done_from_json(run.get("done", {})),
            )
            for run in (runs if isinstance(runs, list) else [runs])
        ]
    return out


# ---- fault helpers ----------------------------------------------------------


@dataclass
class EchoBackend:
    """Every operation sends `request` once and finishes with the response as DONE data."""

    request: DoeRequest
    aborted: int = 0

    def start(self, op: Op, target: TargetFunction, *, mmio: Sequence[LockBar] = ()) -> Action:
        return self.request

    def doe_response(self, payload: bytes) -> Action:
        return Done(0, "echo", payload)

    def transport_error(self, error: int) -> Action:
        return Done(error, f"echo: transport error {error}")

    def abort(self) -> None:
        self.aborted += 1


class FailingBackend:
    """A backend with a bug: raises from every call (the device must survive it)."""

    def start(self, op: Op, target: TargetFunction, *, mmio: Sequence[LockBar] = ()) -> Action:
        raise RuntimeError("backend bug on start")

    def doe_response(self, payload: bytes) -> Action:
        raise RuntimeError("backend bug on response")

    def transport_error(self, error: int) -> Action:
        raise RuntimeError("backend bug on error")

    def abort(self) -> None:
        raise RuntimeError("backend bug on abort")
