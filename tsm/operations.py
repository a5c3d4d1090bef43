"""Sans-IO operation driver of the TSM model: the object a relay or adapter loops over.

    op = tsm.connect()
    while not op.done:
        req = op.next_request            # DoeRequest(doe_type 1|2, payload)
        try:
            op.feed(transport(req.doe_type, req.payload))
        except OSError as exc:           # timeout, -EIO, ... (the relay's own failure)
            op.fail(-exc.errno if exc.errno else str(exc))
    done = op.result                     # Done(status "ok"|"failed", reason, evidence, value)

DOE type 1 carries plain SPDM, type 2 secured SPDM (PCIe 6.2 §6.30.1 "DOE data object
types"; DSP0277).  This is exactly what the kernel's PCI/TSM relay can carry
(`pci_tsm_doe_transfer(pdev, type, ...)`, see docs/linux-pci-tsm.md §4), so the model never
needs anything but a (type, bytes) -> bytes exchange.

An operation wraps a generator that yields `DoeRequest`s and receives response payloads.
Exceptions escaping the generator become a failed `Done` with a readable reason; they
never escape `feed`/`fail`, so a relay loop cannot be killed by a misbehaving device.
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

DOE_TYPE_SPDM = 1  # PCIe 6.2 §6.30.1 / DSP0276: DOE type 1 = SPDM
DOE_TYPE_SECURED_SPDM = 2  # DOE type 2 = secured SPDM (DSP0277)


@dataclass(frozen=True)
class DoeRequest:
    """One DOE exchange the TSM asks the host to carry (vendor 0x0001, PCI-SIG)."""

    doe_type: int
    payload: bytes = field(repr=False)
    # The responder asked us to come back later (SPDM ResponseNotReady, RDT): the relay
    # should wait this long before sending.  The model keeps no time itself.
    delay_us: int = 0

    def __repr__(self) -> str:  # payloads may be secured records: show sizes only
        return f"DoeRequest(doe_type={self.doe_type}, {len(self.payload)} bytes)"


@dataclass(frozen=True)
class Done:
    """Outcome of an operation.

    `evidence` is the model's evidence document at completion (JSON-serialisable, never
    key material); `value` is operation-specific (e.g. the decoded interface report dict
    for `report`), None when failed.
    """

    status: Literal["ok", "failed"]
    reason: str
    evidence: dict[str, Any]
    value: Any = None
    # Negative errno a kernel relay can hand to user space for a failure: the transport's
    # own errno, -EACCES for authentication/trust/policy refusals, -EPROTO for a
    # malformed or unexpected response, -EBADMSG for a record that does not
    # authenticate, -ENOTCONN / -EBUSY for state, else -EIO (model.errno_of).  0 when ok.
    errno: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class TransportFailure(Exception):
    """Injected into an operation by `fail()`: the DOE exchange did not complete."""

    def __init__(self, cause: int | str) -> None:
        self.cause = cause
        super().__init__(describe_transport_failure(cause))


def describe_transport_failure(cause: int | str) -> str:
    if isinstance(cause, int):
        code = abs(cause)
        name = errno_mod.errorcode.get(code, "?")
        return f"transport failure: errno {cause} ({'-' if cause < 0 else ''}{name})"
    return f"transport failure: {cause}"


@dataclass
class Progress:
    """What an operation is doing now, plus its step log (for a readable CLI trace and
    for per-phase timing).  Times come from the model's injected clock."""

    clock: Callable[[], float]
    phase: str = ""
    step: str = ""
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (t, phase, text)
    listeners: list[Callable[[str, str], None]] = field(default_factory=list)

    def enter(self, phase: str, step: str = "") -> None:
        self.phase = phase
        self.step = step

    def log(self, text: str) -> None:
        self.events.append((self.clock(), self.phase, text))
        for listener in self.listeners:
            listener(self.phase, text)


OpGen = Generator[DoeRequest, bytes, Any]


class TsmOperation:
    """Drives one TSM operation; see the module docstring for the loop."""

    def __init__(
        self,
        name: str,
        gen: OpGen,
        progress: Progress,
        finish: Callable[[BaseException | None, Any], Done],
    ) -> None:
        self.name = name
        self.progress = progress
        self._gen = gen
        self._finish = finish
        self.done = False
        self.result: Done | None = None
        self.next_request: DoeRequest | None = None
        self._advance(lambda: next(self._gen))

    @property
    def phase(self) -> str:
        return self.progress.phase

    @property
    def step(self) -> str:
        return self.progress.step

    def _advance(self, step: Callable[[], DoeRequest]) -> None:
        try:
            self.next_request = step()
            return
        except StopIteration as stop:
            error: BaseException | None = None
            value = stop.value
        except Exception as exc:  # a device must not be able to crash the relay loop
            error, value = exc, None
        self.done = True
        self.next_request = None
        self.result = self._finish(error, value)

    def feed(self, response: bytes) -> None:
        """The DOE response payload to `next_request` (same DOE type as the request; for
        type 2 the responder may answer a plaintext SPDM ERROR, which the SPDM layer
        recognises)."""
        if self.done:
            raise RuntimeError(f"{self.name}: operation already complete")
        self._advance(lambda: self._gen.send(bytes(response)))

    def fail(self, cause: int | str) -> None:
        """The transport could not carry `next_request` (errno such as -EIO/-ETIMEDOUT, or
        a reason text).  The operation fails; the model cleans up its side."""
        if self.done:
            raise RuntimeError(f"{self.name}: operation already complete")
        exc = TransportFailure(cause)
        self._advance(lambda: self._gen.throw(exc))
