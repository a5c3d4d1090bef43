"""Device-side TDISP responder (PCIe 6.2 §11.3) with one TDI state machine per interface.

`TdispResponder.handle(payload, session_id)` takes the VDM payload (ProtocolID 0x01
first) and returns the response payload.  TDISP must run inside a secured SPDM session
(§11.3: TDISP messages are carried in SPDM secured messages); a request with
`session_id=None` raises `VdmRefused` (the SPDM layer answers SessionRequired) rather
than a TDISP_ERROR, so nothing about the TDI leaks in the clear.  Configurable through
`TdispPolicy.require_session`.

Request checks, in order (each failure is a TDISP_ERROR echoing the INTERFACE_ID):
  shorter than the header            -> INVALID_REQUEST
  TDISPVersion != 0x10               -> VERSION_MISMATCH
  unknown or unadvertised type       -> UNSUPPORTED_REQUEST (ERROR_DATA = request code)
  INTERFACE_ID not a TDI we host     -> INVALID_INTERFACE
  body length/format wrong           -> INVALID_REQUEST
  then per message, state rules from `tdi_state` (INVALID_INTERFACE_STATE) and:
  LOCK: reserved/unsupported flags, default stream keys not programmed for all six
        (direction x sub-stream) slots over *this* session (§11.3.8) -> INVALID_REQUEST;
        on success a fresh 32-byte START nonce, the MMIO reporting offset and a
        report snapshot are stored.
  REPORT: OFFSET beyond the report or LENGTH 0 -> INVALID_REQUEST; the portion is
        min(LENGTH, policy.max_report_portion, what is left), REMAINDER the rest.
  START: nonce mismatch -> INVALID_NONCE (state unchanged, tee-io-validator 6.2);
        from another session than the LOCK -> INVALID_REQUEST.  The nonce is single use.

Enforcement hooks for the device model, on the `Tdi` object (`responder.tdi(id)`):
  `config_violation(reason)`  forbidden change while locked: LOCKED/RUN -> ERROR
  `function_reset()`          FLR: any state -> CONFIG_UNLOCKED, lock context forgotten
and `TdispResponder.session_ended(id)` moves TDIs locked over that session to ERROR,
`TdispResponder.ide_stream_insecure(stream, reason)` those whose default stream lost an
active key (§11.4.5; the dispatcher wires IDE_KM's K_SET_STOP to it).
`Tdi.machine.history` holds every transition with time and reason.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from tdisp.codes import (
    LOCK_FLAGS_RESERVED,
    NONCE_SIZE,
    TDISP_VERSION_10,
    LockFlags,
    MmioAttr,
    RequestCode,
    TdiState,
)
from tdisp.device_interface import DeviceInterface, InterfaceId
from tdisp.errors import (
    InsufficientEntropy,
    InvalidInterface,
    InvalidInterfaceState,
    InvalidNonce,
    InvalidTdispRequest,
    MalformedMessage,
    MalformedVdm,
    NoSession,
    TdispRequestError,
    TdispUnspecified,
    TdispVersionMismatch,
    UnsupportedTdispRequest,
)
from tdisp.interface_report import InterfaceReport, LockParams, report_for_lock
from tdisp.messages import (
    HEADER_SIZE,
    REQUESTS,
    BindP2pStreamRequest,
    BindP2pStreamResponse,
    DeviceInterfaceReport,
    DeviceInterfaceState,
    GetDeviceInterfaceReport,
    GetTdispCapabilities,
    LockInterfaceRequest,
    LockInterfaceResponse,
    SetMmioAttributeRequest,
    SetMmioAttributeResponse,
    StartInterfaceRequest,
    StartInterfaceResponse,
    StopInterfaceResponse,
    TdispCapabilities,
    TdispError,
    TdispMessage,
    TdispVersion,
    UnbindP2pStreamRequest,
    UnbindP2pStreamResponse,
    VdmRequest,
    VdmResponse,
    decode_body,
    decode_header,
)
from tdisp.policy import TdispPolicy, req_msgs_bitmap
from tdisp.tdi_state import (
    ANY_STATE,
    REPORT_STATES,
    HistoryEntry,
    Reject,
    TdiEvent,
    TdiStateMachine,
    transition_table,
)
from tdisp.vendor_defined import ProtocolId

MAX_REPORT_SIZE = 0xFFFF  # OFFSET and REMAINDER_LENGTH are u16 (§11.3.10)


class IdeKeyStatus(Protocol):
    """What LOCK asks IDE_KM (implemented by `IdeKmResponder`)."""

    def keys_ready(self, stream_id: int, session_id: int, require_go: bool = False) -> bool: ...


VendorHandler = Callable[[VdmRequest], VdmResponse]


@dataclass
class LockContext:
    session_id: int | None
    params: LockParams
    nonce: bytes | None  # None once START consumed it
    report: bytes
    p2p_streams: set[int] = field(default_factory=set)
    mmio_updates: dict[int, int] = field(default_factory=dict)  # range id -> attributes


class Tdi:
    """One TDEV interface: its description, state machine and lock context."""

    def __init__(
        self,
        description: DeviceInterface,
        machine: TdiStateMachine,
    ) -> None:
        self.description = description
        self.machine = machine
        self.lock: LockContext | None = None

    @property
    def interface_id(self) -> InterfaceId:
        return self.description.interface_id

    @property
    def state(self) -> TdiState:
        return self.machine.state

    @property
    def history(self) -> list[HistoryEntry]:
        return self.machine.history

    @property
    def report(self) -> InterfaceReport | None:
        return InterfaceReport.decode(self.lock.report) if self.lock else None

    def config_violation(self, reason: str) -> TdiState:
        """Device model hook: a change forbidden while locked (§11.2.4) -> ERROR."""
        self.machine.fire(TdiEvent.VIOLATION, reason)
        return self.state

    def function_reset(self) -> TdiState:
        """Device model hook: FLR -> CONFIG_UNLOCKED; nonce, offset and report forgotten."""
        self.machine.fire(TdiEvent.FUNCTION_RESET, "function level reset")
        self.lock = None
        return self.state


class TdispResponder:
    def __init__(
        self,
        interfaces: Iterable[DeviceInterface],
        policy: TdispPolicy | None = None,
        ide: IdeKeyStatus | None = None,
        vendor_handler: VendorHandler | None = None,
        clock: Callable[[], float] | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.policy = policy or TdispPolicy()
        self.ide = ide
        self.vendor_handler = vendor_handler
        self.random_bytes = random_bytes
        self.tsm_caps: int | None = None
        self.log: list[str] = []  # evidence: one line per request; never nonces or keys
        table = transition_table(self.policy.stop_states)
        self.tdis: dict[int, Tdi] = {}
        for desc in interfaces:
            machine = TdiStateMachine(table=table, clock=clock)
            self.tdis[desc.interface_id.function_id] = Tdi(desc, machine)
        self._handlers: dict[int, Callable[[Tdi, TdispMessage, int | None], TdispMessage]] = {
            RequestCode.GET_TDISP_VERSION: self._version,
            RequestCode.GET_TDISP_CAPABILITIES: self._capabilities,
            RequestCode.LOCK_INTERFACE_REQUEST: self._lock,
            RequestCode.GET_DEVICE_INTERFACE_REPORT: self._report,
            RequestCode.GET_DEVICE_INTERFACE_STATE: self._state,
            RequestCode.START_INTERFACE_REQUEST: self._start,
            RequestCode.STOP_INTERFACE_REQUEST: self._stop,
            RequestCode.BIND_P2P_STREAM_REQUEST: self._bind_p2p,
            RequestCode.UNBIND_P2P_STREAM_REQUEST: self._unbind_p2p,
            RequestCode.SET_MMIO_ATTRIBUTE_REQUEST: self._set_mmio,
            RequestCode.VDM_REQUEST: self._vdm,
        }

    # ---- public ---------------------------------------------------------------

    def tdi(self, interface_id: InterfaceId | int) -> Tdi:
        fid = interface_id if isinstance(interface_id, int) else interface_id.function_id
        return self.tdis[fid]

    @property
    def supported_requests(self) -> set[int]:
        return self.policy.supported_requests(vdm=self.vendor_handler is not None)

    def handle(self, payload: bytes, session_id: int | None) -> bytes:
        """VDM payload in (ProtocolID 0x01 first), VDM payload out."""
        if not payload or payload[0] != ProtocolId.TDISP:
            raise MalformedVdm("not a TDISP VDM payload")
        if session_id is None and self.policy.require_session:
            raise NoSession("TDISP outside a secured session")
        return bytes([ProtocolId.TDISP]) + self.handle_message(payload[1:], session_id)

    def handle_message(self, data: bytes, session_id: int | None) -> bytes:
        """TDISP message in, TDISP message out (no ProtocolID byte)."""
        header = decode_header(data.ljust(HEADER_SIZE, b"\x00"))
        try:
            name = RequestCode(header.message_type).name
        except ValueError:
            name = f"0x{header.message_type:02x}"
        try:
            response = self._dispatch(data, session_id)
        except TdispRequestError as exc:
            self.log.append(f"{header.interface_id} {name} -> {exc}")
            return TdispError(header.interface_id, int(exc.code), exc.data, exc.extended).encode()
        self.log.append(f"{header.interface_id} {name} -> {type(response).__name__}")
        return response.encode()

    def ide_stream_insecure(self, stream_id: int, reason: str) -> None:
        """The IDE stream a locked TDI uses lost its keys: LOCKED/RUN -> ERROR (§11.4.5)."""
        if not self.policy.ide_insecure_is_violation:
            return
        for tdi in self.tdis.values():
            if (
                tdi.lock is not None
                and tdi.lock.params.default_stream_id == stream_id
                and tdi.state in (TdiState.CONFIG_LOCKED, TdiState.RUN)
            ):
                tdi.machine.fire(TdiEvent.VIOLATION, f"IDE stream {stream_id} insecure: {reason}")

    def session_ended(self, session_id: int) -> None:
        """§11.4.5: TDIs locked over a terminated session go to ERROR."""
        for tdi in self.tdis.values():
            if tdi.lock is not None and tdi.lock.session_id == session_id:
                tdi.machine.fire(TdiEvent.VIOLATION, f"SPDM session 0x{session_id:08x} terminated")

    # ---- dispatch -------------------------------------------------------------

    def _dispatch(self, data: bytes, session_id: int | None) -> TdispMessage:
        if len(data) < HEADER_SIZE:
            raise InvalidTdispRequest("shorter than the TDISP header")
        header = decode_header(data)
        if header.version != TDISP_VERSION_10:
            raise TdispVersionMismatch(
                f"TDISPVersion 0x{header.version:02x}"
            )
        code = header.message_type
        cls = REQUESTS.get(code)
        if cls is None or code not in self.supported_requests:
            raise UnsupportedTdispRequest(
                f"message type 0x{code:02x}", data=code
            )
        tdi = self.tdis.get(header.interface_id.function_id)
        if tdi is None:
            raise InvalidInterface(f"no TDI {header.interface_id}")
        try:
            request = decode_body(cls, header, data)
        except MalformedMessage as exc:
            raise InvalidTdispRequest(str(exc)) from exc
        return self._handlers[code](tdi, request, session_id)

    @staticmethod
    def _require_state(tdi: Tdi, states: frozenset[TdiState], what: str) -> None:
        if tdi.state not in states:
            raise InvalidInterfaceState(
                f"{what} in {tdi.state.name}"
            )

    @staticmethod
    def _fire(tdi: Tdi, event: TdiEvent, reason: str = "") -> None:
        out = tdi.machine.fire(event, reason)
        if isinstance(out, Reject):
            raise TdispRequestError.for_code(out.error)(f"{event.value} in {tdi.state.name}")

    # ---- requests -------------------------------------------------------------

    def _version(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        return TdispVersion(req.interface_id, (TDISP_VERSION_10,))

    def _capabilities(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        assert isinstance(req, GetTdispCapabilities)
        self.tsm_caps = req.tsm_caps
        p = self.policy
        return TdispCapabilities(
            req.interface_id,
            dsm_caps=p.dsm_caps,
            req_msgs_supported=req_msgs_bitmap(self.supported_requests, p.req_msgs_convention),
            lock_interface_flags_supported=p.effective_lock_flags,
            dev_addr_width=p.dev_addr_width,
            num_req_this=tdi.description.num_req_this,
            num_req_all=tdi.description.num_req_all,
        )

    def _lock(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        assert isinstance(req, LockInterfaceRequest)
        outcome = tdi.machine.outcome(TdiEvent.LOCK)
        if isinstance(outcome, Reject):
            raise TdispRequestError.for_code(outcome.error)(f"LOCK in {tdi.state.name}")
        if req.flags & LOCK_FLAGS_RESERVED:
            raise InvalidTdispRequest(f"reserved flags 0x{req.flags:x}")
        if req.flags & ~self.policy.effective_lock_flags:
            raise InvalidTdispRequest(
                f"unsupported lock flags 0x{req.flags:x}"
            )
        if self.policy.lock_requires_ide_keys and not (
            self.ide is not None
            and session_id is not None
            and self.ide.keys_ready(
                req.default_stream_id, session_id, self.policy.lock_requires_key_set_go
            )
        ):
            raise InvalidTdispRequest(
                f"IDE keys of stream {req.default_stream_id} not programmed on this session",
            )
        params = LockParams(
            req.flags, req.default_stream_id, req.mmio_reporting_offset, req.bind_p2p_address_mask
        )
        report = report_for_lock(tdi.description, params).encode()
        if len(report) > MAX_REPORT_SIZE:
            raise TdispUnspecified("interface report too large")
        nonce = self.random_bytes(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise InsufficientEntropy("nonce source failed")
        sid = "none" if session_id is None else f"0x{session_id:08x}"
        self._fire(
            tdi,
            TdiEvent.LOCK,
            f"session {sid}, stream {req.default_stream_id}, flags 0x{req.flags:x}",
        )
        tdi.lock = LockContext(session_id, params, nonce, report)
        return LockInterfaceResponse(req.interface_id, nonce)

    def _report(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        assert isinstance(req, GetDeviceInterfaceReport)
        self._require_state(tdi, REPORT_STATES, "GET_DEVICE_INTERFACE_REPORT")
        assert tdi.lock is not None
        report = tdi.lock.report
        if req.offset >= len(report) or req.length == 0:
            raise InvalidTdispRequest(
                f"offset {req.offset} length {req.length} for a {len(report)}-byte report",
            )
        size = min(req.length, self.policy.max_report_portion, len(report) - req.offset)
        portion = report[req.offset : req.offset + size]
        remainder = len(report) - req.offset - size
        return DeviceInterfaceReport(req.interface_id, remainder, portion)

    def _state(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        return DeviceInterfaceState(req.interface_id, int(tdi.state))

    def _start(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        assert isinstance(req, StartInterfaceRequest)
        outcome = tdi.machine.outcome(TdiEvent.START)
        if isinstance(outcome, Reject):
            raise TdispRequestError.for_code(outcome.error)(f"START in {tdi.state.name}")
        assert tdi.lock is not None
        if tdi.lock.nonce is None or not hmac.compare_digest(tdi.lock.nonce, req.nonce):
            raise InvalidNonce("START nonce mismatch")
        if self.policy.start_requires_lock_session and tdi.lock.session_id != session_id:
            raise InvalidTdispRequest("START on another session")
        self._fire(tdi, TdiEvent.START)
        tdi.lock.nonce = None
        return StartInterfaceResponse(req.interface_id)

    def _stop(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        self._fire(tdi, TdiEvent.STOP)
        tdi.lock = None
        return StopInterfaceResponse(req.interface_id)

    def _bind_p2p(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        assert isinstance(req, BindP2pStreamRequest)
        self._require_state(tdi, self.policy.p2p_states, "BIND_P2P_STREAM_REQUEST")
        assert tdi.lock is not None
        if not tdi.lock.params.flags & LockFlags.BIND_P2P:
            raise InvalidTdispRequest("TDI locked without BIND_P2P")
        tdi.lock.p2p_streams.add(req.p2p_stream_id)
        return BindP2pStreamResponse(req.interface_id)

    def _unbind_p2p(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        assert isinstance(req, UnbindP2pStreamRequest)
        self._require_state(tdi, self.policy.p2p_states, "UNBIND_P2P_STREAM_REQUEST")
        assert tdi.lock is not None
        if req.p2p_stream_id not in tdi.lock.p2p_streams:
            raise InvalidTdispRequest(
                f"P2P stream {req.p2p_stream_id} not bound"
            )
        tdi.lock.p2p_streams.discard(req.p2p_stream_id)
        return UnbindP2pStreamResponse(req.interface_id)

    def _set_mmio(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        assert isinstance(req, SetMmioAttributeRequest)
        self._require_state(tdi, self.policy.mmio_attribute_states, "SET_MMIO_ATTRIBUTE")
        assert tdi.lock is not None
        want = req.mmio_range
        report = InterfaceReport.decode(tdi.lock.report)
        for r in report.mmio_ranges:
            if (r.range_id, r.first_page, r.number_of_pages) == (
                want.range_id,
                want.first_page,
                want.number_of_pages,
            ) and r.range_attributes & MmioAttr.UPDATABLE:
                tdi.lock.mmio_updates[want.range_id] = want.range_attributes
                return SetMmioAttributeResponse(req.interface_id)
        raise InvalidTdispRequest("no updatable range matches")

    def _vdm(self, tdi: Tdi, req: TdispMessage, session_id: int | None) -> TdispMessage:
        assert isinstance(req, VdmRequest)
        self._require_state(tdi, ANY_STATE, "VDM_REQUEST")
        assert self.vendor_handler is not None  # else filtered as UNSUPPORTED_REQUEST
        return self.vendor_handler(req)
