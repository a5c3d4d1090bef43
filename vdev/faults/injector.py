"""Apply a FaultPlan to a TeeDevice, outside the protocol engines.

Two seams, one per layer of vdev.faults.plan:

  transport  `device.spdm_message(doe_type, payload)` is wrapped (an instance attribute
             shadowing the method), which the DOE mailbox handlers, the spdm-emu socket
             path (`TeeDevice.doe_object`, MCTP) and the trace layer all call: rules
             matching "doe" / "secured" see whole objects and records there;
  message    the SPDM responder's `message_interceptor`, which sees every plaintext
             request -- in a session after the record was opened -- and the plaintext
             response before it is sealed: rules naming a request act there.

Drop, delay and DOE-error are transport events even when a name selected them: the
message layer leaves them pending and the transport layer carries them out once the
engine has answered.  On the DOE mailbox, drop holds the response with the mailbox BUSY
until the requester ABORTs (a stuck BUSY), delay holds it `delay_ms` (Linux gives up
after 1 s), doe_error sets the DOE Status ERROR bit.  On the spdm-emu socket there is no
mailbox: drop and doe_error send an empty message, delay waits before replying.

Faults that change what the device *is* rather than what it sends act just before the
engine runs: changed_measurement (the measurement provider answers differently, so the
response is validly signed), wrong_chain (another identity's chain in the certificate
slot, for every GET_CERTIFICATE until the next GET_VERSION), tdi_error (the TDI is sent
to ERROR as if the device had detected a violation, §11.2.4).  Every injection is logged
and told to `observers` (the tracer's fault event).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import NoReturn

from spdm.codes import Req, Rsp
from spdm.identity import (
    CertSlots,
    IdentityParams,
    generate_identity,
    key_type_of,
)
from spdm.measurements import Measurement
from tdisp.messages import GetDeviceInterfaceReport, decode_vdm
from vdev.doe.data_object import DOE_TYPE_CMA_SPDM, DOE_TYPE_SECURED_CMA_SPDM, DoeProtocolId
from vdev.doe.mailbox import DoeRejected, MailboxState, ResponseGate
from vdev.endpoint.tee_device import TeeDevice
from vdev.faults import mutate
from vdev.faults.mutate import NotApplicable
from vdev.faults.names import message_name, protocol_of, vdm_payload
from vdev.faults.plan import MATCH_SECURED, FaultPlan, FaultRule, code_name

log = logging.getLogger(__name__)

FaultObserver = Callable[[str], None]
Process = Callable[[bytes], bytes]
Reply = tuple[int, bytes]


def request_name(doe_type: int, payload: bytes) -> str:
    """Transport-layer name: "secured" for a record, the request code otherwise."""
    if doe_type == DOE_TYPE_SECURED_CMA_SPDM:
        return MATCH_SECURED
    if len(payload) >= 2 and payload[1] in Req._value2member_map_:
        return Req(payload[1]).name
    return f"0x{payload[1]:02x}" if len(payload) >= 2 else "short"


def _reply_name(doe_type: int, reply: bytes, request: str) -> str:
    if doe_type == DOE_TYPE_SECURED_CMA_SPDM:
        return "secured response"
    if len(reply) >= 2 and reply[1] in Rsp._value2member_map_:
        return Rsp(reply[1]).name
    return f"response to {request}"


class FaultInjector:
    def __init__(self, device: TeeDevice, plan: FaultPlan | None = None) -> None:
        self.device = device
        self.plan = plan or FaultPlan()
        # Told about every injected fault: the device's list, shared with the tracer.
        self.observers: list[FaultObserver] = device.fault_observers
        self._held_gate: ResponseGate | None = None
        self._held_rule: FaultRule | None = None
        # Set by the message layer, carried out by the transport layer: (rule, text).
        self._pending: tuple[FaultRule, str] | None = None
        # duplicate: the next request is answered with this, unprocessed.
        self._dup_record: Reply | None = None
        self._dup_message: bytes | None = None
        # replay: the last genuine answer per name.
        self._last_record: dict[str, Reply] = {}
        self._last_message: dict[str, bytes] = {}
        self._force_not_ready = False
        self._measurement_rule: FaultRule | None = None
        self._chain_swapped = False
        self._impostor: CertSlots | None = None
        self._inner = device.spdm_message
        device.spdm_message = self.handle  # type: ignore[method-assign]
        config, hooks = device.responder.config, device.responder.hooks
        self._slots = config.slots
        self._next_interceptor = hooks.message_interceptor
        hooks.message_interceptor = self._intercept
        self._prior_not_ready = hooks.not_ready
        hooks.not_ready = self._not_ready
        self._measurements = config.measurements
        if self._measurements is not None:
            config.measurements = self._measured

    def _report(self, text: str) -> None:
        log.warning("fault injected: %s", text)
        for observer in self.observers:
            observer(text)

    def _skip(self, rule: FaultRule, text: str) -> None:
        """The rule was selected but cannot act here: not counted as fired."""
        rule.fired -= 1
        log.warning("fault %s not injected: %s", rule.kind, text)

    @property
    def _on_mailbox(self) -> bool:
        # The mailbox runs its handlers synchronously on GO, still RECEIVING; the
        # spdm-emu socket path reaches the device with the mailbox idle.
        return self.device.doe.state is MailboxState.RECEIVING

    # ---- transport layer ------------------------------------------------------------

    def handle(self, doe_type: int, payload: bytes) -> Reply:
        name = request_name(doe_type, payload)
        if self._dup_record is not None:
            dup, self._dup_record = self._dup_record, None
            self._report(f"duplicate: previous response delivered again for {name} "
                         f"(not processed)")
            return dup
        rule = self.plan.select(name, "transport")
        self._pending = None
        if rule is not None and rule.kind in ("error", "doe_error"):
            return self._refuse(rule, f"{name} #{rule.seen}", doe_type)
        kind, reply = self._inner(doe_type, payload)
        genuine = (kind, reply)
        if rule is not None:
            rsp = f"{_reply_name(doe_type, reply, name)} #{rule.seen}"
            kind, reply = self._transport_fault(rule, rsp, name, kind, reply)
        if self._pending is not None:
            pending, text = self._pending
            self._pending = None
            kind, reply = self._transport_fault(pending, text, name, kind, reply)
        self._last_record[name] = genuine
        return kind, reply

    def _refuse(self, rule: FaultRule, tag: str, doe_type: int) -> Reply:
        # A busy or broken device has not processed the request, so a retry meets
        # consistent transcripts.
        if rule.kind == "doe_error":
            self._doe_error(tag)
        # A plaintext ERROR even for a secured request, as for a record the responder
        # cannot open (spdm.requester accepts that form).
        version = self.device.responder.conn.version or 0x10
        self._report(f"error {tag} (ERROR {code_name(rule.match, rule.code)})")
        return DOE_TYPE_CMA_SPDM, mutate.spdm_error(version, rule.code)

    def _doe_error(self, tag: str) -> NoReturn:
        self._report(f"doe_error {tag} (DOE ERROR bit)" if self._on_mailbox
                     else f"doe_error {tag} (no response on the socket)")
        raise DoeRejected(f"fault injection: doe_error on {tag}")

    def _transport_fault(self, rule: FaultRule, rsp: str, name: str, kind: int,
                         reply: bytes) -> Reply:
        if rule.kind == "corrupt":
            try:
                reply, where = mutate.corrupt_offset(reply, rule.offset)
            except NotApplicable as exc:
                self._skip(rule, str(exc))
                return kind, reply
            what = "MAC" if rule.field_name == "mac" else where
            self._report(f"corrupt {rsp} ({what})")
            return kind, reply
        if rule.kind == "truncate":
            self._report(f"truncate {rsp} ({len(reply)} -> {min(rule.length, len(reply))} "
                         f"bytes)")
            return kind, reply[: rule.length]
        if rule.kind == "duplicate":
            self._dup_record = (kind, reply)
            self._report(f"duplicate {rsp} (sent again for the next request)")
            return kind, reply
        if rule.kind == "replay":
            old = self._last_record.get(name)
            if old is None:
                self._skip(rule, f"no earlier response to {name} to replay")
                return kind, reply
            self._report(f"replay {rsp} (the previous {name} response instead)")
            return old
        if rule.kind == "doe_error":  # selected by name: the engine has answered already
            self._doe_error(rsp)
        return self._hold(rule, rsp, kind, reply)

    def _hold(self, rule: FaultRule, rsp: str, kind: int, reply: bytes) -> Reply:
        """drop / delay."""
        if not self._on_mailbox:
            if rule.kind == "drop":
                self._report(f"drop {rsp} (no response on the socket)")
                raise DoeRejected(f"fault injection: drop on {rsp}")
            self.device.socket_reply_delay = rule.delay_ms / 1000
            self._report(f"delay {rsp} ({rule.delay_ms} ms)")
            return kind, reply
        if rule.kind == "delay" and self.device.defer_later is None:
            # Nothing could release a held response (no server loop): say so.
            self._skip(rule, f"delay {rsp} needs the server's event loop")
            return kind, reply
        # The mailbox calls its response_gate right after this handler returns
        # (DoeMailbox.go): hold this one response there, then restore the gate.
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
        if defer is None:  # _hold checked it just before; typing wants it again
            return False

        def ready() -> None:
            doe.complete(ticket)  # False (ignored) when aborted meanwhile

        defer(rule.delay_ms / 1000, ready)
        return True

    # ---- message layer ----------------------------------------------------------------

    def _intercept(self, session_id: int | None, request: bytes, process: Process) -> bytes:
        if self._next_interceptor is not None:
            inner, nxt = process, self._next_interceptor
            process = lambda r: nxt(session_id, r, inner)  # noqa: E731
        name = message_name(request)
        if self._dup_message is not None:
            reply, self._dup_message = self._dup_message, None
            self._report(f"duplicate: previous response delivered again for {name} "
                         f"(not processed)")
            return reply
        if name == "GET_VERSION":
            self._chain_swapped = False  # a new connection: the device's own chain again
        rule = self.plan.select(name, "message")
        if rule is None:
            reply = self._run(name, request, process)
        else:
            where = f" in session {session_id:#010x}" if session_id is not None else ""
            reply = self._message_fault(rule, f" #{rule.seen}{where}", name,
                                        session_id, request, process)
        return reply

    def _run(self, name: str, request: bytes, process: Process) -> bytes:
        """The engine's answer; remembered for replay."""
        if name == "GET_CERTIFICATE" and self._chain_swapped:
            config = self.device.responder.config
            config.slots = self._impostor_slots()
            try:
                reply = process(request)
            finally:
                config.slots = self._slots
        else:
            reply = process(request)
        self._last_message[name] = reply
        return reply

    def _message_fault(self, rule: FaultRule, suffix: str, name: str, session_id: int | None,
                       request: bytes, process: Process) -> bytes:
        """`suffix` (" #N in session S") follows the request's or the response's name."""
        kind, tag = rule.kind, name + suffix
        if kind == "error":
            return self._error_answer(rule, tag, name, request, process)
        if kind == "doe_error":
            return self._refuse(rule, tag, DOE_TYPE_CMA_SPDM)[1]
        if kind in ("drop", "delay") or (kind == "corrupt" and rule.field_name == "mac"):
            if kind == "corrupt" and session_id is None:
                self._skip(rule, f"{tag}: no MAC outside a session")
                return self._run(name, request, process)
            reply = self._run(name, request, process)
            self._pending = (rule, mutate.response_name(reply) + suffix)
            return reply
        if kind == "tdi_error":
            before = self.device.tdi.state.name
            after = self.device.tdi.config_violation(f"fault injection before {name}")
            self._report(f"tdi_error {tag} (TDI {before} -> {after.name})")
            return self._run(name, request, process)
        if kind == "not_ready":
            self._force_not_ready = True
            try:
                reply = self._run(name, request, process)
            finally:
                self._force_not_ready = False
            self._report(f"not_ready {tag} (ERROR ResponseNotReady; the real response "
                         f"waits for RESPOND_IF_READY)")
            return reply
        if kind == "changed_measurement":
            self._measurement_rule = rule
            try:
                reply = self._run(name, request, process)
            finally:
                self._measurement_rule = None
            which = "every block" if rule.index is None else f"block {rule.index}"
            self._report(f"changed_measurement {tag} ({which} differs, validly signed)")
            return reply
        if kind == "wrong_chain":
            self._chain_swapped = True
            self._report(f"wrong_chain {tag} (another device's certificate chain until the "
                         f"next GET_VERSION)")
            return self._run(name, request, process)
        earlier = self._last_message.get(name)  # what replay sends instead
        genuine = self._run(name, request, process)
        if kind == "duplicate":
            self._dup_message = genuine
            self._report(f"duplicate {mutate.response_name(genuine)}{suffix} (sent again "
                         f"for the next request)")
            return genuine
        if kind == "replay":
            if earlier is None:
                self._skip(rule, f"no earlier response to {name} to replay")
                return genuine
            self._report(f"replay {mutate.response_name(earlier)}{suffix} (the previous "
                         f"{name} response)")
            return earlier
        try:
            reply, what = self._mutate(rule, name, request, genuine)
        except NotApplicable as exc:
            self._skip(rule, f"{tag}: {exc}")
            return genuine
        self._report(f"{kind} {mutate.response_name(genuine)}{suffix} ({what})")
        return reply

    def _mutate(self, rule: FaultRule, name: str, request: bytes,
                genuine: bytes) -> tuple[bytes, str]:
        kind = rule.kind
        if kind == "corrupt":
            if rule.field_name:
                return mutate.corrupt_field(request, genuine, rule.field_name,
                                            self.device.responder.algorithms)
            return mutate.corrupt_offset(genuine, rule.offset)
        if kind == "truncate":
            kept = min(rule.length, len(genuine))
            return genuine[: rule.length], f"{len(genuine)} -> {kept} bytes"
        if kind == "wrong_version":
            return mutate.wrong_version(genuine, rule.version)
        if kind == "wrong_slot":
            return mutate.wrong_slot(genuine, rule.slot)
        if kind == "wrong_nonce":
            return mutate.wrong_nonce(genuine)
        if kind == "report_mismatch":
            lock = self.device.tdi.lock
            if lock is None:
                raise NotApplicable("the TDI holds no locked report")
            req = decode_vdm(vdm_payload(request) or b"")
            offset = req.offset if isinstance(req, GetDeviceInterfaceReport) else 0
            return mutate.report_mismatch(genuine, offset, lock.report)
        raise NotApplicable(f"kind {kind} has no message form")  # pragma: no cover

    def _error_answer(self, rule: FaultRule, tag: str, name: str, request: bytes,
                      process: Process) -> bytes:
        """`error` by name: the protocol's own failure answer, the request not processed."""
        try:
            if protocol_of(name) == "tdisp":
                reply = mutate.tdisp_error(request, rule.code)
            elif name == "KEY_PROG":
                reply = mutate.kp_ack_error(request, rule.code)
            else:
                version = request[0] if request else self.device.responder.conn.version
                reply = mutate.spdm_error(version, rule.code)
        except NotApplicable as exc:
            self._skip(rule, f"{tag}: {exc}")
            return self._run(name, request, process)
        code = code_name(rule.match, rule.code)
        self._report(f"error {tag} ({mutate.response_name(reply)} {code})")
        return reply

    # ---- hooks into the device's providers ----------------------------------------------

    def _not_ready(self, req: int) -> bool:
        if self._force_not_ready:
            return True
        return bool(self._prior_not_ready is not None and self._prior_not_ready(req))

    def _measured(self) -> Sequence[Measurement]:
        assert self._measurements is not None  # installed only over a provider
        values = list(self._measurements())
        rule = self._measurement_rule
        if rule is None:
            return values
        return [dataclasses.replace(v, value=bytes([v.value[0] ^ 0xFF]) + v.value[1:])
                if (rule.index is None or v.index == rule.index) and v.value else v
                for v in values]

    def _impostor_slots(self) -> CertSlots:
        if self._impostor is None:
            own = self.device.identity
            other = generate_identity(IdentityParams(key_type=key_type_of(own.key),
                                                     common_name="vdev impostor"))
            self._impostor = CertSlots({slot: other for slot in self._slots.slots})
        return self._impostor


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
