"""Adapt the TSM model's operation objects (tsm.operations.TsmOperation) to
`TsmBackend`.

The model drives one operation as an object with `done`, `next_request`
(a request with `doe_type` and `payload`), `feed(bytes)`, `fail(cause)` and
`result` (status "ok"/"failed", reason, evidence, value).  It has no errno,
so a failed result maps to -EIO unless the result carries an `errno`
attribute; the reason text goes to the guest unchanged.  DONE data: see
`_result_data`.  A request's `delay_us` (SPDM ResponseNotReady) is passed on.
LOCK's BAR records (mailbox 1.1) reach the model's start function as
`start(op, target, mmio=records)`; without records it is called as
`start(op, target)`, so a two-argument start function serves 1.0 guests.
Only structural typing is used, so this module does not import tdisp.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from vdev.tsm_mailbox.backend import Action, DoeRequest, Done, TargetFunction
from vdev.tsm_mailbox.protocol import LockBar, Op


class ModelRequest(Protocol):
    @property
    def doe_type(self) -> int: ...

    @property
    def payload(self) -> bytes: ...


class ModelDone(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    @property
    def evidence(self) -> dict[str, Any]: ...

    @property
    def value(self) -> Any: ...


class ModelOperation(Protocol):
    done: bool

    @property
    def next_request(self) -> ModelRequest | None: ...

    @property
    def result(self) -> ModelDone | None: ...

    def feed(self, response: bytes) -> None: ...

    def fail(self, cause: int | str) -> None: ...


StartOperation = Callable[..., ModelOperation]
"""`start(op, target)`, or `start(op, target, mmio=records)` for a LOCK with BARs."""


def _json(obj: object) -> bytes:
    return json.dumps(obj, default=str, sort_keys=True, separators=(",", ":")).encode()


def _result_data(done: ModelDone) -> bytes:
    """Success: bytes values as they are (the raw interface report), other values
    as compact JSON {"value": ...} (e.g. {"value": "RUN"} for STATUS), nothing
    for None; the evidence document (certificates, measurements) is too large
    for the one-page sysfs reads that consume results.  Failure: JSON
    {"evidence": ...}, what the model knew when it refused."""
    if not done.ok:
        return _json({"evidence": done.evidence})
    if isinstance(done.value, bytes | bytearray):
        return bytes(done.value)
    if done.value is None:
        return b""
    return _json({"value": done.value})


class OperationBackend:
    """A `TsmBackend` over a function that starts model operations."""

    def __init__(
        self,
        start_operation: StartOperation,
        on_done: Callable[[Op, TargetFunction, ModelDone], None] | None = None,
    ) -> None:
        self._start_operation = start_operation
        self._on_done = on_done
        self._op: ModelOperation | None = None
        self._current: tuple[Op, TargetFunction] | None = None

    def start(self, op: Op, target: TargetFunction, *, mmio: Sequence[LockBar] = ()) -> Action:
        if mmio:
            self._op = self._start_operation(op, target, mmio=tuple(mmio))
        else:
            self._op = self._start_operation(op, target)
        self._current = (op, target)
        return self._action()

    def doe_response(self, payload: bytes) -> Action:
        if self._op is None:
            raise RuntimeError("DOE response with no operation in flight")
        self._op.feed(payload)
        return self._action()

    def transport_error(self, error: int) -> Action:
        if self._op is None:
            raise RuntimeError("transport error with no operation in flight")
        self._op.fail(error)
        return self._action()

    def abort(self) -> None:
        op, self._op = self._op, None
        if op is not None and not op.done:
            op.fail("aborted by the mailbox (guest abort, reset or disconnect)")

    def _action(self) -> Action:
        op = self._op
        assert op is not None
        if not op.done:
            req = op.next_request
            if req is None:
                raise RuntimeError("model operation neither done nor requesting")
            delay = int(getattr(req, "delay_us", 0) or 0)
            return DoeRequest(req.doe_type, bytes(req.payload), max(delay, 0))
        self._op = None
        done = op.result
        if done is None:
            raise RuntimeError("model operation done without a result")
        if self._on_done is not None and self._current is not None:
            self._on_done(*self._current, done)
        if done.ok:
            return Done(0, done.reason, _result_data(done))
        status = getattr(done, "errno", None)
        return Done(-abs(status) if isinstance(status, int) and status else -errno.EIO,
                    done.reason, _result_data(done))
