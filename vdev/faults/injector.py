"""Apply a FaultPlan to a TeeDevice at its DOE transport, outside the SPDM engines.

`install(device, plan)` wraps the device's `spdm_message(doe_type, payload)` (an
instance attribute shadowing the method), which the mailbox's SPDM handlers and the
trace layer's handlers both call: the protocol engines never see a fault, and a trace
shows the response as it went over the wire.  Type-1 requests are matched by
their SPDM request code; type-2 records only as "secured" (matching after decryption
would need the responder's message_observer and breaking the record after sealing
would need the session keys here: not done in this first cut).  Only the DOE mailbox
path is covered; the spdm-emu socket path (`TeeDevice.doe_object`) is not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from spdm.codes import ErrorCode, Req, Rsp
from vdev.doe_mailbox import DoeRejected, ResponseGate
from vdev.doe_object import (
    DOE_TYPE_CMA_SPDM,
    DOE_TYPE_SECURED_CMA_SPDM,
    DoeProtocolId,
)
from vdev.faults.plan import MATCH_SECURED, FaultPlan, FaultRule
from vdev.tee_device import TeeDevice

log = logging.getLogger(__name__)

FaultObserver = Callable[[str], None]


def request_name(doe_type: int, payload: bytes) -> str:
    if doe_type == DOE_TYPE_SECURED_CMA_SPDM:
        return MATCH_SECURED
    if len(payload) >= 2 and payload[1] in Req._value2member_map_:
        return Req(payload[1]).name
    return f"0x{payload[1]:02x}" if len(payload) >= 2 else "short"


def response_name(doe_type: int, reply: bytes, request: str) -> str:
    if doe_type == DOE_TYPE_SECURED_CMA_SPDM:
        return "secured response"
    if len(reply) >= 2 and reply[1] in Rsp._value2member_map_:
        return Rsp(reply[1]).name
    return f"response to {request}"


class FaultInjector:
    def __init__(self, device: TeeDevice, plan: FaultPlan | None = None) -> None:
        self.device = device
        self.plan = plan or FaultPlan()
        # Told about every injected fault (the tracer's `fault` event, tests).
        self.observers: list[FaultObserver] = []
        self._held_gate: ResponseGate | None = None
        self._held_rule: FaultRule | None = None
        self._inner = device.spdm_message
        device.spdm_message = self.handle  # type: ignore[method-assign]

    def _report(self, text: str) -> None:
        log.warning("fault injected: %s", text)
        for observer in self.observers:
            observer(text)

    def handle(self, doe_type: int, payload: bytes) -> tuple[int, bytes]:
        name = request_name(doe_type, payload)
        rule = self.plan.select(name)
        if rule is None:
            return self._inner(doe_type, payload)
        tag = f"{name} #{rule.seen}"
        # error / doe_error answer instead of the engine: a busy or broken device has
        # not processed the request, so a retry meets consistent transcripts.
        if rule.kind == "error":
            # A plaintext ERROR even for a secured request, as for a record the
            # responder cannot open (spdm.requester accepts that form).
            version = self.device.responder.conn.version or 0x10
            code = ErrorCode(rule.code).name if rule.code in ErrorCode._value2member_map_ \
                else f"{rule.code:#04x}"
            self._report(f"error {tag} (ERROR {code})")
            return DOE_TYPE_CMA_SPDM, bytes([version, Rsp.ERROR, rule.code, 0])
        if rule.kind == "doe_error":
            self._report(f"doe_error {tag} (DOE ERROR bit)")
            raise DoeRejected(f"fault injection: doe_error on {name}")
        kind, reply = self._inner(doe_type, payload)
        rsp = f"{response_name(doe_type, reply, name)} #{rule.seen}"
        if rule.kind == "corrupt":
            if not reply:
                return kind, reply
            at = rule.offset if rule.offset >= 0 else len(reply) + rule.offset
            at = min(max(at, 0), len(reply) - 1)
            where = "last byte" if at == len(reply) - 1 else f"byte {at}"
            self._report(f"corrupt {rsp} ({where})")
            return kind, reply[:at] + bytes([reply[at] ^ 0xFF]) + reply[at + 1 :]
        if rule.kind == "truncate":
            self._report(f"truncate {rsp} ({len(reply)} -> {min(rule.length, len(reply))} bytes)")
            return kind, reply[: rule.length]
        # drop / delay: the mailbox calls its response_gate right after this handler
        # returns (DoeMailbox.go); hold this one response there, then restore the gate.
        if rule.kind == "delay" and self.device.defer_later is None:
            # Nothing could release a held response (no server loop): say so, once per
            # hit, instead of reporting a delay that does not happen.
            log.warning("fault injection: delay %s needs the server's event loop; "
                        "not delayed", rsp)
            return kind, reply
        doe = self.device.doe
        self._held_gate, self._held_rule = doe.response_gate, rule
        doe.response_gate = self._gate
        self._report(f"drop {rsp} (BUSY until ABORT)" if rule.kind == "drop"
                     else f"delay {rsp} ({rule.delay_ms} ms)")
        return kind, reply

    def _gate(self, protocol: DoeProtocolId, ticket: int) -> bool:
        doe, rule = self.device.doe, self._held_rule
        doe.response_gate, self._held_gate, self._held_rule = self._held_gate, None, None
        if rule is None or rule.kind == "drop":
            return True  # never completed: ABORT discards it (DoeMailbox.abort)
        defer = self.device.defer_later
        if defer is None:  # handle() checked it just before; typing wants it again
            return False
        def ready() -> None:
            doe.complete(ticket)  # False (ignored) when aborted meanwhile

        defer(rule.delay_ms / 1000, ready)
        return True


def install(device: TeeDevice, plan: FaultPlan | None = None) -> FaultInjector:
    """The device's injector, created on first use (kept as `device.fault_injector`)."""
    existing: FaultInjector | None = getattr(device, "fault_injector", None)
    if existing is not None:
        if plan is not None:
            existing.plan.rules.extend(plan.rules)
        return existing
    injector = FaultInjector(device, plan)
    device.fault_injector = injector  # type: ignore[attr-defined]
    return injector
