"""Sans-IO operation driver of the TSM model: the object a relay or adapter loops over.

    op = tsm.connect()
    while not op.done:
        req = op.next_request            # DoeRequest(doe_type 1|2, payload)
        try:
            op.feed(transport(req.doe_type, req.payload))
        except OSError as exc:           # timeout, -EIO, ... (the relay's own failure)
            op.fail(-exc.errno if exc.errno else str(exc))
    done = op.result                     # Done(errno, reason, value, evidence)

DOE type 1 carries plain SPDM, type 2 secured SPDM (PCIe 6.2 §6.30.1 "DOE data object
types"; DSP0277).  This is exactly what the kernel's PCI/TSM relay can carry
(`pci_tsm_doe_transfer(pdev, type, ...)`, see docs/linux-pci-tsm.md §4), so the model never
needs anything but a (type, bytes) -> bytes exchange.

`DoeRequest` and `Done` are the boundary types of `tsm.mailbox_protocol`, shared with the
mailbox device.  An operation wraps a generator that yields `DoeRequest`s and receives
response payloads.  Exceptions escaping the generator become a failed `Done` with a
readable reason; they never escape `feed`/`fail`, so a relay loop cannot be killed by a
misbehaving device.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from tsm.errors import TransportFailure
from tsm.mailbox_protocol import DoeRequest, Done


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
