"""Sans-IO SPDM responder (DSP0274 1.0–1.4, DSP0277 secured messages over PCI DOE).

Usage by a DOE transport adapter:

    rsp = Responder(ResponderConfig(slots=CertSlots({0: identity})))
    # DOE type 1 (SPDM):          reply_payload = rsp.handle(payload)            -> type 1
    # DOE type 2 (secured SPDM):  kind, reply = rsp.handle_doe(2, payload)       -> kind 1 or 2
    #                             (or rsp.handle_secured(record) -> record)

The responder never performs I/O; clocks and randomness come from the config.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from spdm import algorithms as alg
from spdm import crypto, opaque
from spdm import psk as psk_mod
from spdm import rsp_provisioning as prov_handlers
from spdm.algorithms import AlgType, NegotiatedAlgorithms
from spdm.capabilities import Provisioning, caps_for_version, exercisable
from spdm.cert_verify import CertPolicy, system_time, verify_chain
from spdm.codes import (
    KEY_UPDATE_UPDATE_ALL_KEYS,
    KEY_UPDATE_UPDATE_KEY,
    KEY_UPDATE_VERIFY_NEW_KEY,
    MAX_SLOTS,
    MEAS_CAP_MASK,
    MEAS_SPEC_DMTF,
    MEAS_SUMMARY_ALL,
    MEAS_SUMMARY_NONE,
    MEAS_SUMMARY_TCB,
    MEL_SPEC_DMTF,
    MULTI_KEY_CONN,
    MUT_AUTH_REQUESTED,
    MUT_AUTH_WITH_ENCAP_REQUEST,
    OPAQUE_FMT_0,
    OPAQUE_FMT_1,
    SUPPORTED_VERSIONS,
    V10,
    V11,
    V12,
    V13,
    V14,
    ErrorCode,
    KeyUsage,
    Req,
    ReqCap,
    Rsp,
    RspCap,
    version_entry,
)
from spdm.errors import (
    Busy,
    CertificateError,
    DecryptError,
    ForeignPayload,
    InvalidRequest,
    RecordError,
    RequestRefused,
    RequestTooLarge,
    SessionLimitExceeded,
    SessionRequired,
    SpdmError,
    UnexpectedRequest,
    UnsupportedRequest,
    VersionMismatch,
)
from spdm.hooks import ResponderHooks
from spdm.identity import OID_EKU_REQUESTER_AUTH, OID_EKU_RESPONDER_AUTH, CertSlots, spdm_cert_chain
from spdm.key_schedule import KeySchedule
from spdm.measurements import Measurement, MeasurementProvider, block_bytes, summary_hash
from spdm.messages import (
    CERTIFICATE_HEADER_SIZE,
    CHUNK_ACK_EARLY_ERROR,
    CHUNK_ATTR_LAST,
    CHUNK_RESPONSE_HEADER_SIZE,
    FINISH_ATTR_SIGNATURE,
    MEAS_ATTR_RAW_BIT_STREAM,
    MEAS_ATTR_SIGNATURE,
    Algorithms,
    Capabilities,
    Certificate,
    Challenge,
    ChallengeAuth,
    ChunkGet,
    ChunkResponse,
    ChunkSend,
    ChunkSendAck,
    DeliverEncapsulatedResponse,
    Digests,
    EncapsulatedRequest,
    EncapsulatedResponseAck,
    EndSession,
    EndSessionAck,
    Error,
    Finish,
    FinishRsp,
    GetCapabilities,
    GetCertificate,
    GetDigests,
    GetEncapsulatedRequest,
    GetMeasurements,
    GetVersion,
    Heartbeat,
    HeartbeatAck,
    KeyExchange,
    KeyExchangeRsp,
    KeyUpdate,
    KeyUpdateAck,
    LargeResponseData,
    Measurements,
    MessageFormatError,
    NegotiateAlgorithms,
    PskExchange,
    PskExchangeRsp,
    PskFinish,
    PskFinishRsp,
    RespondIfReady,
    ResponseNotReadyData,
    ResponseTooLargeData,
    VendorDefinedRequest,
    VendorDefinedResponse,
    Version,
    chunk_send_ack_header_size,
    decode,
    encode,
    header,
)
from spdm.negotiation import ConnectionInfo, check_requester_caps
from spdm.provisioning import (
    CertificateStore,
    KeyPair,
    can_issue_csr,
    derive_key_pairs,
    key_pair_of,
    visible_slots,
)
from spdm.secured_message import DOE_TRANSPORT, TransportParams, peek_session_id
from spdm.session import Session
from spdm.state import (
    CHUNK_REQUESTS,
    NOT_IN_SESSION,
    SESSION_ONLY_REQUESTS,
    ConnState,
    SessionState,
    connection_next,
    session_next,
)
from spdm.transcript import ConnectionTranscript, SessionTranscript, reset_for_request

DEFAULT_RSP_CAPS = (
    RspCap.CERT
    | RspCap.CHAL
    | RspCap.MEAS_SIG
    | RspCap.MEAS_FRESH
    | RspCap.ENCRYPT
    | RspCap.MAC
    | RspCap.KEY_EX
    | RspCap.PSK_WITH_CONTEXT
    | RspCap.HBEAT
    | RspCap.KEY_UPD
    | RspCap.CHUNK
)


#: The CAPABILITIES flags behind each request that only a session carries.
_SESSION_REQUEST_CAPS: dict[Req, int] = {
    Req.FINISH: RspCap.KEY_EX,
    Req.PSK_FINISH: RspCap.PSK | RspCap.PSK_WITH_CONTEXT,
    Req.HEARTBEAT: RspCap.HBEAT,
    Req.KEY_UPDATE: RspCap.KEY_UPD,
    Req.END_SESSION: RspCap.KEY_EX | RspCap.PSK | RspCap.PSK_WITH_CONTEXT,
}


@dataclass(frozen=True)
class VendorRequestContext:
    """What a VENDOR_DEFINED handler learns about the request's envelope."""

    standard_id: int
    vendor_id: bytes
    session_id: int | None
    version: int

    @property
    def in_session(self) -> bool:
        return self.session_id is not None


VendorHandler = Callable[[bytes, VendorRequestContext], bytes]


@dataclass
class AlgorithmPriorities:
    """The responder's choice per NEGOTIATE_ALGORITHMS field: the first algorithm in each
    sequence that the requester also offers wins (DSP0274 ALGORITHMS).

    SPDM 1.4 pairs: a connection signs with BaseAsym or PqcAsym and exchanges keys with
    DHE or KEM, never both (DSP0274 1.4 §10.4).  When the requester offers a usable
    algorithm of both families, `pqc_first` says which family wins (libspdm's
    `pqc_first` does the same); an empty sequence never selects from that family."""

    asym: Sequence[int] = alg.SUPPORTED_ASYM
    hash: Sequence[int] = alg.SUPPORTED_HASH
    meas_hash: Sequence[int] = alg.SUPPORTED_MEAS_HASH
    dhe: Sequence[int] = alg.SUPPORTED_DHE
    aead: Sequence[int] = alg.SUPPORTED_AEAD
    req_asym: Sequence[int] = alg.SUPPORTED_ASYM
    pqc_asym: Sequence[int] = alg.SUPPORTED_PQC_ASYM
    kem: Sequence[int] = alg.SUPPORTED_KEM
    req_pqc_asym: Sequence[int] = alg.SUPPORTED_PQC_ASYM
    pqc_first: bool = False

    def pick(self, classical: int, pqc: int) -> tuple[int, int]:
        """Of one selection per family, keep one (`pqc_first` decides a tie)."""
        if classical and pqc:
            return (0, pqc) if self.pqc_first else (classical, 0)
        return classical, pqc


@dataclass
class ResponderConfig:
    """How the responder speaks SPDM.  Observation and fault seams are not settings:
    they are `spdm.hooks.ResponderHooks`, given to the Responder beside this."""

    # -- GET_VERSION / GET_CAPABILITIES / NEGOTIATE_ALGORITHMS
    versions: Sequence[int] = (V10, V11, V12, V13, V14)
    capabilities: int = int(DEFAULT_RSP_CAPS)
    ct_exponent: int = 12
    # DOE replies to QEMU must fit in 4608 bytes with DOE header and record overhead.
    data_transfer_size: int = 4096
    max_spdm_msg_size: int = 65536
    rdt_exponent: int = 10  # ResponseNotReady: RDTExponent of the delay asked for
    algorithms: AlgorithmPriorities = field(default_factory=AlgorithmPriorities)
    # -- identity and evidence: certificate slots, measurements
    slots: CertSlots = field(default_factory=CertSlots)
    measurements: MeasurementProvider | None = None
    # -- provisioning (spdm.provisioning): key pairs (empty: one per distinct slot key),
    # CertificateInfo per slot (DeviceCert when absent), where SET_CERTIFICATE writes
    # (None: no SET_CERT_CAP / CSR_CAP), whether slots other than 0 may be written outside
    # a session (a trusted environment, e.g. manufacturing).
    key_pairs: Sequence[KeyPair] = ()
    slot_models: Mapping[int, int] = field(default_factory=dict)
    certificate_store: CertificateStore | None = None
    set_certificate_outside_session: bool = False
    # -- device information (1.3): the DMTF measurement extension log and the
    # GET_ENDPOINT_INFO DeviceClassIdentifier (None: no MEL_CAP / EP_INFO_CAP).
    mel: Callable[[], bytes] | None = None
    endpoint_info: bytes | None = None
    # -- mutual authentication: requested only when set AND the requester advertised
    # MUT_AUTH_CAP (docs/protocols.md §8.3).  The requester's chain must be known
    # beforehand (basic flow, MutAuthRequested bit 0); SPDM chain bytes are built per hash.
    mut_auth: bool = False
    requester_chain_der: Sequence[bytes] = ()
    requester_trust_anchors: Sequence[x509.Certificate] = ()
    # -- sessions
    # PSKHint -> PSK (spdm.psk); the empty hint is the PSK for a PSK_EXCHANGE without one.
    psks: Mapping[bytes, bytes] = field(default_factory=dict)
    psk_salt: bytes | None = None
    heartbeat_period: int = 0
    max_sessions: int = 4
    secured_versions: Sequence[int] = opaque.DEFAULT_SECURED_VERSIONS
    transport: TransportParams = field(default_factory=lambda: DOE_TRANSPORT)
    terminate_session_on_decrypt_error: bool = True
    # -- injected sources: the engine reads no clock and draws no randomness of its own
    random: Callable[[int], bytes] = os.urandom
    # Clock for validating the requester's certificates (mutual authentication).
    now: Callable[[], datetime.datetime] = system_time
    # Monotonic seconds, for HeartbeatPeriod enforcement: a session with no message for
    # 2 x HeartbeatPeriod is terminated (DSP0274 HEARTBEAT). None disables the check.
    monotonic: Callable[[], float] | None = None


# Requests that may not be answered with ResponseNotReady (DSP0274 ERROR clause, ResponseNotReady).
NO_DELAY_REQUESTS = frozenset(
    {
        Req.GET_VERSION,
        Req.GET_CAPABILITIES,
        Req.NEGOTIATE_ALGORITHMS,
        Req.RESPOND_IF_READY,
        Req.CHUNK_SEND,
        Req.CHUNK_GET,
        Req.END_SESSION,
        Req.KEY_UPDATE,
        Req.FINISH,
        Req.PSK_FINISH,
        Req.HEARTBEAT,
    }
)


@dataclass
class _EncapState:
    """Responder-side progress of the encapsulated GET_DIGESTS/GET_CERTIFICATE flow."""

    request_id: int = 0
    expecting: int = 0  # request code whose response is awaited, 0 before the first one
    slot: int = 0
    digest: bytes = b""
    chain: bytearray = field(default_factory=bytearray)
    done: bool = False


@dataclass
class _ChunkSendState:
    handle: int
    expected_seq: int
    large_size: int
    data: bytearray


@dataclass
class _ChunkGetState:
    handle: int
    next_seq: int
    offset: int
    data: bytes


class Responder:
    def __init__(
        self, config: ResponderConfig | None = None, hooks: ResponderHooks | None = None
    ) -> None:
        self.config = config or ResponderConfig()
        self.hooks = hooks or ResponderHooks()
        self._vendor: dict[tuple[int, bytes, int | None], VendorHandler] = {}
        self.sessions: dict[int, Session] = {}
        self._handlers: dict[Req, Callable[[bytes, Any, Session | None], bytes]] = {
            Req.GET_VERSION: self._get_version,
            Req.GET_CAPABILITIES: self._get_capabilities,
            Req.NEGOTIATE_ALGORITHMS: self._negotiate_algorithms,
            Req.GET_DIGESTS: self._get_digests,
            Req.GET_CERTIFICATE: self._get_certificate,
            Req.CHALLENGE: self._challenge,
            Req.GET_MEASUREMENTS: self._get_measurements,
            Req.KEY_EXCHANGE: self._key_exchange,
            Req.FINISH: self._finish,
            Req.PSK_EXCHANGE: self._psk_exchange,
            Req.PSK_FINISH: self._psk_finish,
            Req.HEARTBEAT: self._heartbeat,
            Req.KEY_UPDATE: self._key_update,
            Req.END_SESSION: self._end_session,
            Req.VENDOR_DEFINED_REQUEST: self._vendor_defined,
            Req.CHUNK_SEND: self._chunk_send,
            Req.CHUNK_GET: self._chunk_get,
            Req.GET_ENCAPSULATED_REQUEST: self._get_encapsulated_request,
            Req.DELIVER_ENCAPSULATED_RESPONSE: self._deliver_encapsulated_response,
            Req.GET_KEY_PAIR_INFO: lambda r, h, s: prov_handlers.get_key_pair_info(self, r, h, s),
            Req.GET_CSR: lambda r, h, s: prov_handlers.get_csr(self, r, h, s),
            Req.SET_CERTIFICATE: lambda r, h, s: prov_handlers.set_certificate(self, r, h, s),
            Req.GET_MEASUREMENT_EXTENSION_LOG:
                lambda r, h, s: prov_handlers.get_mel(self, r, h, s),
            Req.GET_ENDPOINT_INFO: lambda r, h, s: prov_handlers.get_endpoint_info(self, r, h, s),
        }
        self.slot_models: dict[int, int] = dict(self.config.slot_models)
        self._key_pairs: list[KeyPair] | None = None
        self._key_pairs_stamp: tuple[tuple[int, int], ...] = ()
        self._csr_ok: bool | None = None
        self._next_rsp_session = 0xFF00
        self.reset()

    # ---- public API --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the connection and all sessions (e.g. on function-level reset)."""
        self.state = ConnState.NOT_STARTED
        self.conn = ConnectionInfo()
        self.transcript = ConnectionTranscript()
        self.authenticated = False  # a CHALLENGE completed on this connection
        self._clear_sessions()
        self._handshake_clear_session: Session | None = None
        self._send_chunks: _ChunkSendState | None = None
        self._get_chunks: _ChunkGetState | None = None
        self._chunk_handle = 0
        self._pending: tuple[int, int, bytes] | None = None  # (code, token, response)
        self._token = 0
        self._after_send: list[Callable[[], None]] = []
        self._dword_padding = False
        self._reassembled = False

    @property
    def algorithms(self) -> NegotiatedAlgorithms:
        return self.conn.algorithms

    def register_vendor_handler(
        self,
        standard_id: int,
        vendor_id: bytes,
        handler: VendorHandler,
        protocol_id: int | None = None,
    ) -> None:
        """Register a VENDOR_DEFINED_REQUEST handler.

        The handler receives the request payload (for PCI-SIG messages this starts with the
        ProtocolID byte) and a VendorRequestContext; it returns the response payload (again
        starting with ProtocolID for PCI-SIG) or raises an SpdmError (answered with
        ERROR of its class's code). With `protocol_id`, the
        handler is chosen by the payload's first byte, so IDE_KM (0) and TDISP (1) can share
        (PCI-SIG 0x0003, vendor b"\\x01\\x00").
        """
        self._vendor[(standard_id, bytes(vendor_id), protocol_id)] = handler

    def handle(self, request: bytes) -> bytes:
        """Process one plaintext SPDM request (DOE type 1) and return the response."""
        session = None
        if self._handshake_clear_session is not None and request[1:2] == bytes([Req.FINISH]):
            session = self._handshake_clear_session
        self._dword_padding = True
        try:
            resp = self._intercepted(request, session, secured=False)
        finally:
            self._dword_padding = False
        self._run_after_send()
        return resp

    def handle_secured(self, record: bytes) -> bytes:
        """Process one DSP0277 record (DOE type 2). Returns a record, or — when the record
        cannot be attributed to a session or authenticated — a plaintext ERROR."""
        kind, data = self.handle_doe(2, record)
        return data

    def handle_doe(self, data_object_type: int, payload: bytes) -> tuple[int, bytes]:
        """DOE adapter entry point: (type 1|2, payload) -> (type, reply payload)."""
        if data_object_type == 1:
            return 1, self.handle(payload)
        try:
            sid = peek_session_id(payload)
        except RecordError:
            return 1, self._error_msg(ErrorCode.INVALID_REQUEST)
        session = self.sessions.get(sid)
        if session is not None and self._heartbeat_expired(session, touch=False):
            self._drop_session(session)
            session = None
        if session is None or session.req_prot is None:
            return 1, self._error_msg(ErrorCode.INVALID_SESSION if self.conn.version < V12
                                      else ErrorCode.SESSION_REQUIRED)
        try:
            plaintext = session.open(payload, from_requester=True)
        except ForeignPayload as exc:
            # Not a decryption failure: the session stays (DecryptError is for records
            # that fail authentication).  There is no SPDM request to name in ErrorData.
            self._heartbeat_expired(session, touch=True)
            out = session.seal(self._error_msg(exc.code, 0), from_requester=False)
            self._run_after_send()
            return 2, out
        except RecordError:
            # DSP0274 ERROR clause: DecryptError; the responder terminates the session.
            if self.config.terminate_session_on_decrypt_error:
                self._drop_session(session)
            return 1, self._error_msg(ErrorCode.DECRYPT_ERROR)
        # Only a record that authenticates counts as the peer being alive.
        self._heartbeat_expired(session, touch=True)
        observe = self.hooks.message_observer
        if observe is not None:
            observe("request", session.session_id, plaintext)
        resp = self._intercepted(plaintext, session, secured=True)
        if observe is not None:
            observe("response", session.session_id, resp)
        out = session.seal(resp, from_requester=False)
        self._run_after_send()
        if resp[1] == Rsp.ERROR and resp[2] == ErrorCode.DECRYPT_ERROR:
            # A failed FINISH/PSK_FINISH verification ends the handshake (DSP0274 ERROR clause,
            # DecryptError).
            self._drop_session(session)
        return 2, out

    # ---- core --------------------------------------------------------------------------------

    def _decode(self, fmt: Any, request: bytes, **params: int) -> Any:
        """Decode a request; DOE type-1 requests may carry DWORD padding (see
        messages.decode), which is stripped before the message enters any transcript."""
        return decode(fmt, request, dword_padding=self._dword_padding, **params)

    def _heartbeat_expired(self, session: Session, *, touch: bool = True) -> bool:
        """DSP0274 HEARTBEAT: a session with a HeartbeatPeriod that hears nothing for
        twice that long is over.  `touch`: this check is a message arriving on it."""
        clock = self.config.monotonic
        if clock is None or not session.heartbeat_period:
            return False
        now = clock()
        last = session.last_activity if session.last_activity is not None else now
        if touch:
            session.last_activity = now
        return now - last > 2 * session.heartbeat_period

    def idle_sessions(self) -> list[Session]:
        """Sessions silent for longer than twice their HeartbeatPeriod."""
        return [s for s in self.sessions.values() if self._heartbeat_expired(s, touch=False)]

    def expire_idle_sessions(self) -> list[int]:
        """End every session that has been silent for twice its HeartbeatPeriod (the
        device's timer calls this; a message on an expired session finds it gone too).
        Returns the ids of the sessions ended."""
        ended = self.idle_sessions()
        for session in ended:
            self._drop_session(session)
        return [s.session_id for s in ended]

    def next_heartbeat_deadline(self) -> float | None:
        """Seconds until the first session with a HeartbeatPeriod may expire, or None."""
        clock = self.config.monotonic
        if clock is None:
            return None
        now = clock()
        waits = [s.last_activity + 2 * s.heartbeat_period - now
                 for s in self.sessions.values()
                 if s.heartbeat_period and s.last_activity is not None]
        return max(min(waits), 0.0) if waits else None

    def _reveal(self, label: str, secret: bytes) -> None:
        if self.hooks.secret_sink is not None:
            self.hooks.secret_sink(label, secret)

    def _run_after_send(self) -> None:
        actions, self._after_send = self._after_send, []
        for action in actions:
            action()

    def _establish(self, session: Session, th2: bytes) -> None:
        session.install_data_keys(th2)
        if self.hooks.on_session_established is not None:
            self.hooks.on_session_established(session.session_id)

    def _clear_sessions(self) -> None:
        for session in list(self.sessions.values()):
            self._drop_session(session)

    def _drop_session(self, session: Session) -> None:
        if self.sessions.pop(session.session_id, None) is not None:
            session.state = SessionState.ENDED
            if self.hooks.on_session_end is not None:
                self.hooks.on_session_end(session.session_id)
        if self._handshake_clear_session is session:
            self._handshake_clear_session = None

    def _error_version(self, hdr: Any = None) -> int:
        """SPDMVersion of an ERROR (DSP0274 "SPDM version"): the negotiated version, 1.0
        before one is agreed and for GET_VERSION.  A GET_CAPABILITIES that selects a
        supported version is refused in that version: the version is accepted before the
        fields are judged; only an unsupported version gets VersionMismatch in 1.0."""
        if hdr is not None:
            if hdr.code == Req.GET_VERSION:
                return V10
            if (hdr.code == Req.GET_CAPABILITIES and self.state == ConnState.AFTER_VERSION
                    and hdr.version in self._common_versions()):
                return int(hdr.version)
        return self.conn.version or V10

    def _error_msg(self, code: int, data: int = 0, extended: bytes = b"", *,
                   version: int | None = None) -> bytes:
        return encode(
            Error,
            {"version": version or self._error_version(), "param1": code, "param2": data,
             "extended": extended},
        )

    def _intercepted(self, request: bytes, session: Session | None, *, secured: bool) -> bytes:
        intercept = self.hooks.message_interceptor
        if intercept is None:
            return self._process(request, session, secured=secured)
        return intercept(session.session_id if session is not None else None, request,
                         lambda r: self._process(r, session, secured=secured))

    def _process(self, request: bytes, session: Session | None, *, secured: bool) -> bytes:
        try:
            hdr = header(request)
        except MessageFormatError:
            return self._error_msg(ErrorCode.INVALID_REQUEST)
        version = self._error_version(hdr)
        before = set(self.sessions)
        try:
            resp = self._dispatch(request, hdr, session)
        except SpdmError as exc:
            # The ERROR code is the exception class's (spdm.errors): a refusal's own
            # code, InvalidRequest for a malformed message, Unspecified as the last
            # resort (e.g. a crypto failure), which never escapes the engine.
            self._after_send.clear()
            self._forget_new_sessions(before)
            return self._error_msg(exc.code, exc.data, exc.extended, version=version)
        out = self._maybe_large(resp, hdr.code)
        if out is not resp and out[2] == ErrorCode.RESPONSE_TOO_LARGE:
            # The response never goes out (ResponseTooLarge): a session its
            # KEY_EXCHANGE / PSK_EXCHANGE created must not linger half-open.
            self._forget_new_sessions(before)
        return out

    def _forget_new_sessions(self, before: set[int]) -> None:
        for sid in set(self.sessions) - before:
            self._drop_session(self.sessions[sid])

    def _maybe_large(self, resp: bytes, code: int, overhead: int = 0) -> bytes:
        """DSP0274 1.2 CHUNK_GET: a response above the requester's DataTransferSize is delivered
        with CHUNK_GET (ERROR LargeResponse) or refused (ResponseTooLarge). `overhead` is
        the CHUNK_SEND_ACK header around an embedded response."""
        limit = self.conn.req_data_transfer_size - overhead
        if (
            self.conn.version < V12
            or not self.conn.req_data_transfer_size
            or len(resp) <= limit
            or code in (Req.CHUNK_GET, Req.CHUNK_SEND)
        ):
            return resp
        if len(resp) > self.conn.req_max_msg_size or not self.conn.chunking:
            self._after_send.clear()
            return self._error_msg(ErrorCode.RESPONSE_TOO_LARGE, 0,
                                   encode(ResponseTooLargeData, {"response_size": len(resp)}))
        self._chunk_handle = (self._chunk_handle + 1) & 0xFF
        self._get_chunks = _ChunkGetState(self._chunk_handle, 0, 0, resp)
        return self._error_msg(ErrorCode.LARGE_RESPONSE, 0,
                               encode(LargeResponseData, {"handle": self._chunk_handle}))

    def _dispatch(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        try:
            req = Req(hdr.code)
        except ValueError:
            raise UnsupportedRequest(hdr.code, "unknown request code") from None

        if req == Req.RESPOND_IF_READY:
            return self._respond_if_ready(request, hdr)

        # Version checks (DSP0274 GET_VERSION / GET_CAPABILITIES): GET_VERSION is always 1.0;
        # GET_CAPABILITIES picks the version; everything after must carry that version.
        if req == Req.GET_VERSION:
            if hdr.version != V10:
                raise VersionMismatch("GET_VERSION must be 1.0")
        elif self.state == ConnState.AFTER_VERSION and req == Req.GET_CAPABILITIES:
            if hdr.version not in self._common_versions():
                raise VersionMismatch("unsupported version")
        elif self.state == ConnState.NOT_STARTED or not self.conn.version:
            # Order violations before a version is agreed are UnexpectedRequest, not
            # VersionMismatch: there is nothing to mismatch against yet.
            raise UnexpectedRequest(f"{req.name} before GET_VERSION/GET_CAPABILITIES")
        elif hdr.version != self.conn.version:
            raise VersionMismatch("version differs from negotiated")

        if (
            len(request) > self.config.data_transfer_size
            and self.conn.version >= V12
            and not self._reassembled
        ):
            raise RequestTooLarge()

        handler = self._handlers.get(req)
        if handler is None:
            # A request this responder does not implement is unsupported in any state.
            raise UnsupportedRequest(req)

        gate = _SESSION_REQUEST_CAPS.get(req)
        if gate is not None and not self.conn.rsp_caps & gate:
            # A session request whose capability this connection was not given is not
            # supported at all: UnsupportedRequest comes before SessionRequired (DSP0274
            # 1.3 Table 58; a device without sessions never "requires" one).
            raise UnsupportedRequest(req)

        next_conn: ConnState | None = self.state
        if session is not None:
            if req in NOT_IN_SESSION:
                raise UnexpectedRequest("not allowed inside a session")
            if session_next(session.state, req) is None:
                raise UnexpectedRequest(f"{req.name} in session state {session.state.value}")
        else:
            if req in SESSION_ONLY_REQUESTS:
                if self.conn.version >= V12:
                    raise SessionRequired(req.name)
                raise UnexpectedRequest(f"{req.name} outside a session")
            next_conn = connection_next(self.state, req)
            if next_conn is None:
                raise UnexpectedRequest(f"{req.name} in state {self.state.value}")

        if self.hooks.busy is not None and req not in NO_DELAY_REQUESTS and self.hooks.busy(req):
            raise Busy()

        # L1/L2 and M1/M2 runs end on the same requests on both sides (transcript module).
        reset_for_request(self.transcript, session.transcript.m if session else None, req,
                          self.authenticated)

        resp = handler(request, hdr, session)
        if session is None and next_conn is not None and req not in CHUNK_REQUESTS:
            self.state = next_conn
        if (
            self.hooks.not_ready is not None
            and req not in NO_DELAY_REQUESTS
            and self.hooks.not_ready(req)
        ):
            self._token = (self._token + 1) & 0xFF
            self._pending = (int(req), self._token, resp)
            ext = encode(
                ResponseNotReadyData,
                {"rdt_exponent": self.config.rdt_exponent, "request_code": int(req),
                 "token": self._token, "rdtm": 1},
            )
            return self._error_msg(ErrorCode.RESPONSE_NOT_READY, 0, ext)
        return resp

    def _respond_if_ready(self, request: bytes, hdr: Any) -> bytes:
        request = self._decode(RespondIfReady, request).raw
        if hdr.version != self.conn.version:
            raise VersionMismatch()
        if self._pending is None or (hdr.param1, hdr.param2) != self._pending[:2]:
            raise UnexpectedRequest("no matching pending response")
        resp = self._pending[2]
        self._pending = None
        return resp

    def _common_versions(self) -> list[int]:
        return [v for v in self.config.versions if v in SUPPORTED_VERSIONS]

    def provisioning(self) -> Provisioning:
        """What this responder was given, for the capability rules (spdm.capabilities)."""
        c = self.config
        pairs = self.key_pairs()
        if self._csr_ok is None:
            self._csr_ok = bool(pairs) and all(can_issue_csr(kp.key) for kp in pairs)
        return Provisioning(
            slots=len(c.slots.slots), key_pairs=len(pairs),
            measurements=c.measurements is not None, psks=len(c.psks),
            heartbeat_period=c.heartbeat_period,
            mutual_auth=c.mut_auth and bool(c.requester_chain_der
                                            or c.requester_trust_anchors),
            certificate_store=c.certificate_store is not None,
            csr=c.certificate_store is not None and self._csr_ok,
            endpoint_info=c.endpoint_info is not None, mel=c.mel is not None,
        )

    # ---- slots and key pairs (spdm.provisioning) ---------------------------------------

    def key_pairs(self) -> list[KeyPair]:
        """KeyPairID - 1 -> key pair: the configured ones, else one per distinct key of
        the slots as they are now (a device that must keep a key pair whose slots were
        all erased configures its key pairs)."""
        if self.config.key_pairs:
            return list(self.config.key_pairs)
        slots = self.config.slots.slots
        stamp = tuple(sorted((s, id(ident.key)) for s, ident in slots.items()))
        if self._key_pairs is None or self._key_pairs_stamp != stamp:
            self._key_pairs = derive_key_pairs(self.config.slots)
            self._key_pairs_stamp = stamp
        return self._key_pairs

    def visible_slots(self) -> dict[int, Any]:
        """The slots this connection may use (spdm.provisioning.visible_slots)."""
        return visible_slots(self.config.slots, self.key_pairs(), self.conn.multi_key)

    def slot_for(self, slot: int, usage: int = 0) -> Any:
        """The identity in a slot this connection may use for `usage` (a KeyUsage bit):
        InvalidRequest for a slot that is empty, out of range or hidden on this
        connection, or whose key may not sign this (multi-key connections; libspdm
        answers InvalidRequest for a KeyUsageMask without the usage)."""
        if not 0 <= slot < MAX_SLOTS:
            raise InvalidRequest(f"SlotID {slot}")
        ident = self.visible_slots().get(slot)
        if ident is None:
            raise InvalidRequest(f"slot {slot} not provisioned")
        if usage and self.conn.multi_key:
            kp = key_pair_of(self.key_pairs(), ident)
            if kp is None or not kp.current_usage & usage:
                raise InvalidRequest(f"the key of slot {slot} may not be used for this")
        return ident

    @property
    def capabilities(self) -> int:
        """The CAPABILITIES flags this responder sends (before the per-version mask): the
        configured ones it can exercise (spdm.capabilities)."""
        return self.config.capabilities & exercisable(self.provisioning())

    def _caps(self) -> int:
        return self.capabilities

    def _require_cap(self, req: Req, rsp_flag: int, req_flag: int = 0) -> None:
        # What this connection was told, not what the device could do in another version.
        if not self.conn.rsp_caps & rsp_flag:
            raise UnsupportedRequest(req)
        if req_flag and not self.conn.req_caps & req_flag:
            raise UnexpectedRequest(f"requester did not advertise capability for {req.name}")

    # ---- VCA -------------------------------------------------------------------------------

    def _get_version(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        request = self._decode(GetVersion, request).raw
        # DSP0274 GET_VERSION: it resets the connection, all sessions included.
        self.conn = ConnectionInfo()
        self.transcript.reset()
        self.authenticated = False
        self._clear_sessions()
        self._handshake_clear_session = None
        self._get_chunks = self._send_chunks = None
        self._pending = None
        resp = encode(
            Version,
            {"version": V10, "entries": [version_entry(v) for v in self._common_versions()]},
        )
        self.transcript.vca += request + resp
        return resp

    def _get_capabilities(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        version = hdr.version
        msg = self._decode(GetCapabilities, request)
        request = msg.raw
        flags = msg.flags or 0
        if version >= V11:
            reason = check_requester_caps(
                version, flags, msg.data_transfer_size, msg.max_spdm_msg_size, msg.param1
            )
            if reason:
                raise InvalidRequest(reason)
            if msg.ct_exponent > 31:
                raise InvalidRequest("CTExponent too large")
        if version >= V13 and msg.param1 & 0x01 and not self._caps() & RspCap.CHUNK:
            # DSP0274 1.3 GET_CAPABILITIES: the Supported Algorithms extended capability
            # needs the large message transfer mechanism on both sides.
            raise InvalidRequest("Supported Algorithms requested but CHUNK_CAP is 0")
        self.conn.version = version
        self.conn.req_caps = flags
        self.conn.req_ct_exponent = msg.ct_exponent or 0
        self.conn.req_data_transfer_size = msg.data_transfer_size or 0
        self.conn.req_max_msg_size = msg.max_spdm_msg_size or 0
        # Before 1.4 an ML-DSA slot cannot be named in BaseAsymAlgo (spdm.capabilities).
        classical = not self.config.slots.slots or bool(self._slot_asym_mask() & 0xFFFF_FFFF)
        caps = caps_for_version(self._caps(), version, classical_key=classical)
        self.conn.rsp_caps = caps
        self.conn.rsp_ct_exponent = self.config.ct_exponent
        fields: dict[str, Any] = {
            "version": version,
            "ct_exponent": self.config.ct_exponent,
            "flags": caps,
        }
        if version >= V12:
            fields["data_transfer_size"] = self.config.data_transfer_size
            fields["max_spdm_msg_size"] = self.config.max_spdm_msg_size
            self.conn.rsp_data_transfer_size = self.config.data_transfer_size
            self.conn.rsp_max_msg_size = self.config.max_spdm_msg_size
        resp = encode(Capabilities, fields)
        self.transcript.vca += request + resp
        return resp

    def _slot_asym_mask(self) -> int:
        """The signature algorithms every provisioned slot can sign with, as
        `spdm.algorithms.asym_key` bits (classical in the low 32, ML-DSA above)."""
        mask = -1
        for ident in self.config.slots.slots.values():
            mask &= ident.asym_mask()
        return 0 if mask == -1 else mask

    def _negotiate_algorithms(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        version = self.conn.version
        msg = self._decode(NegotiateAlgorithms, request)
        request = msg.raw
        if msg.length != len(request):  # request is the unpadded message here
            raise InvalidRequest("Length field does not match message size")
        if version >= V12 and msg.length > 128:
            raise InvalidRequest("NEGOTIATE_ALGORITHMS longer than 128 bytes")
        if len(msg.ext_asym) + len(msg.ext_hash) > 20:
            raise InvalidRequest("too many extended algorithms")
        seen: list[int] = []
        # AlgType 6 (ReqPqcAsymAlg) and 7 (KEMAlg) exist from 1.4 on (DSP0274 1.4 §10.4).
        known = (2, 3, 4, 5, 6, 7) if version >= V14 else (2, 3, 4, 5)
        for s in msg.alg_structs:
            if s.alg_count >> 4 != 2:
                raise InvalidRequest("AlgStruct fixed algorithm count must be 2")
            if s.alg_type not in known or (seen and s.alg_type <= seen[-1]):
                raise InvalidRequest("AlgStructs out of order, duplicated or unknown")
            seen.append(s.alg_type)
        caps = self.conn.rsp_caps
        structs = {s.alg_type: s.supported for s in msg.alg_structs}

        meas_spec = MEAS_SPEC_DMTF if caps & MEAS_CAP_MASK and msg.meas_spec & 1 else 0
        meas_hash = alg.select(alg.mask_of(self.config.algorithms.meas_hash),
                               self.config.algorithms.meas_hash) if meas_spec else 0
        pr = self.config.algorithms
        pq = version >= V14
        slot_mask = self._slot_asym_mask()
        base_asym, pqc_asym = pr.pick(
            alg.select(msg.base_asym & slot_mask & 0xFFFF_FFFF, pr.asym),
            alg.select(msg.pqc_asym & (slot_mask >> alg.PQC_SHIFT), pr.pqc_asym) if pq else 0)
        base_hash = alg.select(msg.base_hash, pr.hash)
        if not base_hash:
            raise InvalidRequest("no common hash algorithm")
        other = 0
        if version >= V12:
            if msg.other_params & OPAQUE_FMT_1:
                other = OPAQUE_FMT_1
            elif msg.other_params & OPAQUE_FMT_0:
                other = OPAQUE_FMT_0
            # Bit 4 of the selection is RequesterMultiKeyConnSel (DSP0274 1.3 Table 21),
            # about the requester's keys: set when it can only do multi-key (01b), which
            # our mutual authentication does not use.  The requester's bit 4
            # (ResponderMultiKeyConn) decides whether this connection is multi-key for us.
            if version >= V13 and (self.conn.req_caps & (ReqCap.MULTI_KEY_ONLY
                                                         | ReqCap.MULTI_KEY_NEG)
                                   == ReqCap.MULTI_KEY_ONLY):
                other |= MULTI_KEY_CONN
        self.conn.resolve_multi_key(bool(msg.other_params & MULTI_KEY_CONN))
        mel_spec = (MEL_SPEC_DMTF if version >= V13 and caps & RspCap.MEL
                    and msg.mel_spec & MEL_SPEC_DMTF else 0)
        # Session algorithms are selected only when both sides can open sessions (as
        # libspdm does); otherwise the AlgStruct is echoed with nothing selected.
        key_ex = self.conn.both(ReqCap.KEY_EX, RspCap.KEY_EX)
        psk = bool(self.conn.req_caps & ReqCap.PSK) and bool(
            caps & (RspCap.PSK | RspCap.PSK_WITH_CONTEXT))
        dhe = kem = aead = ks = req_asym = req_pqc = 0
        if key_ex:
            dhe, kem = pr.pick(alg.select(structs.get(AlgType.DHE, 0), pr.dhe),
                               alg.select(structs.get(AlgType.KEM, 0), pr.kem))
        if key_ex or psk:
            aead = alg.select(structs.get(AlgType.AEAD, 0), pr.aead)
            ks = structs.get(AlgType.KEY_SCHEDULE, 0) & alg.KeySchedule.SPDM
        if self.conn.both(ReqCap.MUT_AUTH, RspCap.MUT_AUTH):
            req_asym, req_pqc = pr.pick(
                alg.select(structs.get(AlgType.REQ_BASE_ASYM, 0), pr.req_asym),
                alg.select(structs.get(AlgType.REQ_PQC_ASYM, 0), pr.req_pqc_asym))
        self.conn.algorithms = NegotiatedAlgorithms(
            meas_spec=meas_spec, other_params=other, meas_hash=meas_hash,
            base_asym=base_asym, base_hash=base_hash, dhe=dhe, aead=aead,
            req_base_asym=req_asym, key_schedule=ks, pqc_asym=pqc_asym, kem=kem,
            req_pqc_asym=req_pqc, mel_spec=mel_spec,
        )
        sel = {AlgType.DHE: dhe, AlgType.AEAD: aead, AlgType.REQ_BASE_ASYM: req_asym,
               AlgType.KEY_SCHEDULE: ks, AlgType.REQ_PQC_ASYM: req_pqc, AlgType.KEM: kem}
        out_structs = [{"alg_type": t, "supported": sel[AlgType(t)]} for t in seen]
        resp = encode(
            Algorithms,
            {
                "version": version, "param1": len(out_structs), "meas_spec_sel": meas_spec,
                "other_params_sel": other, "meas_hash_algo": meas_hash,
                "mel_spec_sel": mel_spec,
                "base_asym_sel": base_asym, "base_hash_sel": base_hash,
                "pqc_asym_sel": pqc_asym, "alg_structs": out_structs,
            },
        )
        self.transcript.vca += request + resp
        return resp

    # ---- identity ------------------------------------------------------------------------------

    @property
    def _h(self) -> int:
        return self.conn.algorithms.hash_size

    def _chain(self, slot: int, usage: int = 0) -> bytes:
        return self.slot_for(slot, usage).spdm_chain(self.conn.algorithms.base_hash)  # type: ignore[no-any-return]

    def _sign(self, slot: int, context: bytes, transcript: bytes) -> bytes:
        ident = self.slot_for(slot)
        a = self.conn.algorithms
        if not crypto.key_matches_asym(ident.key, a.signer):
            raise UnexpectedRequest("no usable BaseAsymAlgo/PqcAsymAlgo negotiated for this slot")
        msg = crypto.message_to_sign(self.conn.version, a.base_hash, context, transcript)
        return crypto.sign(a.signer, a.base_hash, ident.key, msg, context)

    def _get_digests(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        self._require_cap(Req.GET_DIGESTS, RspCap.CERT)
        request = self._decode(GetDigests, request).raw
        visible = self.visible_slots()
        slots = sorted(visible)
        h = self.conn.algorithms.base_hash
        digests = [crypto.digest(h, visible[s].spdm_chain(h)) for s in slots]
        mask = sum(1 << s for s in slots)
        # 1.3: Param1 SupportedSlotMask (slots that exist: all eight when SET_CERTIFICATE
        # can fill them), Param2 ProvisionedSlotMask.
        supported = 0xFF if self.conn.rsp_caps & RspCap.SET_CERT else mask
        fields: dict[str, Any] = {
            "version": self.conn.version,
            "param1": supported if self.conn.version >= V13 else 0,
            "param2": mask, "digests": digests}
        multi = self.conn.multi_key
        if multi:
            pairs = self.key_pairs()
            kps = [key_pair_of(pairs, visible[s]) for s in slots]
            fields["key_pair_ids"] = [kp.key_pair_id if kp else 0 for kp in kps]
            fields["cert_infos"] = [self.slot_models.get(s, 1) for s in slots]
            fields["key_usage_masks"] = [kp.current_usage if kp else 0 for kp in kps]
        resp = encode(Digests, fields, hash_size=self._h, multi_key=int(multi))
        if session is None:
            self.transcript.b += request + resp
            if multi:
                self.transcript.d = bytearray(resp)
        return resp

    def _get_certificate(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        self._require_cap(Req.GET_CERTIFICATE, RspCap.CERT)
        msg = self._decode(GetCertificate, request)
        request = msg.raw
        slot = msg.param1 & 0x0F
        if msg.param1 & 0xF0 or slot >= MAX_SLOTS:
            raise InvalidRequest("bad SlotID")
        chain = self._chain(slot)
        # 1.3 Param2 of CERTIFICATE: the slot's CertificateInfo on a multi-key connection.
        cert_info = self.slot_models.get(slot, 1) if self.conn.multi_key else 0
        if self.conn.version >= V13 and msg.param2 & 0x1:
            # SlotSizeRequested (1.3): no data, RemainderLength = size of the chain.
            resp = encode(Certificate, {"version": self.conn.version, "param1": slot,
                                        "param2": cert_info,
                                        "cert_chain": b"", "remainder_length": len(chain)})
            if session is None:
                self.transcript.b += request + resp
            return resp
        if msg.offset >= len(chain):
            raise InvalidRequest("Offset beyond the certificate chain")
        portion = min(msg.length, len(chain) - msg.offset)
        if self.conn.version >= V12 and self.conn.req_data_transfer_size and not self.conn.chunking:
            portion = min(portion, self.conn.req_data_transfer_size - CERTIFICATE_HEADER_SIZE)
        data = chain[msg.offset : msg.offset + portion]
        resp = encode(
            Certificate,
            {"version": self.conn.version, "param1": slot, "param2": cert_info,
             "cert_chain": data, "remainder_length": len(chain) - msg.offset - portion},
        )
        if session is None:
            self.transcript.b += request + resp
        return resp

    def _meas_summary(self, kind: int) -> bytes:
        if kind == MEAS_SUMMARY_NONE:
            return b""
        if kind not in (MEAS_SUMMARY_TCB, MEAS_SUMMARY_ALL):
            raise InvalidRequest("bad MeasurementSummaryHashType")
        if not self.conn.rsp_caps & MEAS_CAP_MASK or not self.conn.algorithms.meas_hash:
            raise InvalidRequest("measurement summary requested without MEAS_CAP")
        a = self.conn.algorithms
        return summary_hash(self._measurements(), a.meas_hash, a.base_hash, kind)

    def _measurements(self) -> Sequence[Measurement]:
        return self.config.measurements() if self.config.measurements else []

    def _challenge(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        self._require_cap(Req.CHALLENGE, RspCap.CHAL)
        msg = self._decode(Challenge, request)
        request = msg.raw
        slot = msg.param1
        if slot >= MAX_SLOTS:
            raise InvalidRequest("bad SlotID")
        chain = self._chain(slot, KeyUsage.CHALLENGE)
        a = self.conn.algorithms
        summary = self._meas_summary(msg.param2)
        fields = {
            "version": self.conn.version,
            "param1": slot,
            "param2": sum(1 << s for s in self.visible_slots()),
            "cert_chain_hash": crypto.digest(a.base_hash, chain),
            "nonce": self.config.random(32),
            "meas_summary_hash": summary,
            "opaque": b"",
            "requester_context": msg.requester_context,
            "signature": b"",
        }
        unsigned = encode(ChallengeAuth, fields, hash_size=self._h,
                          meas_summary_size=len(summary), sig_size=0)
        self.transcript.c = bytearray(request + unsigned)
        sig = self._sign(slot, crypto.CTX_CHALLENGE_AUTH, self.transcript.m1m2())
        self.transcript.reset_auth()
        self.authenticated = True
        return unsigned + sig

    def _get_measurements(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        caps = self.conn.rsp_caps
        if not caps & MEAS_CAP_MASK:
            raise UnsupportedRequest(Req.GET_MEASUREMENTS)
        if not self.conn.algorithms.meas_hash:
            # The requester did not offer the DMTF measurement specification.
            raise UnexpectedRequest("no measurement specification negotiated")
        msg = self._decode(GetMeasurements, request)
        request = msg.raw
        signed = bool(msg.param1 & MEAS_ATTR_SIGNATURE)
        if signed and not caps & RspCap.MEAS_SIG:
            raise InvalidRequest("signature requested but MEAS_CAP is 01b")
        if msg.param1 & ~(MEAS_ATTR_SIGNATURE | MEAS_ATTR_RAW_BIT_STREAM):
            pass  # reserved attribute bits are ignored (forward compatibility)
        slot_param = msg.slot_id or 0  # absent in SPDM 1.0 (slot 0 implied)
        slot = slot_param & 0x0F
        if signed:
            if slot_param & 0xF0:
                raise InvalidRequest("bad SlotIDParam")
            self.slot_for(slot, KeyUsage.MEASUREMENT)
        a = self.conn.algorithms
        meas = sorted(self._measurements(), key=lambda m: m.index)
        op = msg.param2
        raw = bool(msg.param1 & MEAS_ATTR_RAW_BIT_STREAM) and self.conn.version >= V13
        param1 = 0
        if op == 0:
            param1 = len(meas)
            chosen: list[Measurement] = []
        elif op == 0xFF:
            chosen = meas
        else:
            chosen = [m for m in meas if m.index == op]
            if not chosen:
                raise InvalidRequest(f"no measurement with index {op}")
        record = b"".join(block_bytes(m, a.meas_hash, raw_requested=raw) for m in chosen)
        fields = {
            "version": self.conn.version,
            "param1": param1,
            "param2": slot if signed else 0,
            "number_of_blocks": len(chosen),
            "record": record,
            "nonce": self.config.random(32),
            "opaque": b"",
            "requester_context": msg.requester_context,
            "signature": b"",
        }
        unsigned = encode(Measurements, fields, sig_size=0)
        m = session.transcript.m if session is not None else self.transcript.m
        m += request + unsigned
        if not signed:
            return unsigned
        l1l2 = self.transcript.l1l2(self.conn.version, m)
        m.clear()
        return unsigned + self._sign(slot, crypto.CTX_MEASUREMENTS, l1l2)

    # ---- sessions ----------------------------------------------------------------------------

    def _check_opaque(self, opaque_data: bytes | None) -> None:
        """SPDM 1.4 FINISH / PSK_FINISH OpaqueData: we define no element to act on, but
        with OpaqueDataFmt1 it must still be well-formed general opaque data (DSP0274 1.4
        §10.15, 'General opaque data format'); OpaqueDataFmt0 leaves it free-form."""
        if not opaque_data:
            return
        if len(opaque_data) > opaque.MAX_OPAQUE_SIZE:
            raise InvalidRequest("OpaqueData longer than 1024 bytes")
        if self.conn.opaque_fmt1:
            try:
                opaque.parse_general(opaque_data, fmt1=True)
            except opaque.OpaqueError as exc:
                raise InvalidRequest(f"malformed OpaqueData: {exc}") from exc

    def _select_secured_version(self, opaque_data: bytes) -> int:
        fmt1 = self.conn.opaque_fmt1
        try:
            offered = opaque.parse_supported_versions(opaque_data, fmt1=fmt1)
        except opaque.OpaqueError as exc:
            raise InvalidRequest(str(exc)) from exc
        common = [v for v in offered if v in self.config.secured_versions]
        if not common:
            raise InvalidRequest("no common secured-message version")
        return max(common)

    def _new_session_id(self, req_session_id: int) -> int:
        for _ in range(0x10000):
            rsp_id = self._next_rsp_session
            self._next_rsp_session = (self._next_rsp_session + 1) & 0xFFFF or 1
            sid = (rsp_id << 16) | req_session_id
            if sid not in self.sessions and rsp_id not in (0, 0xFFFF):
                return sid
        raise SessionLimitExceeded()

    def _check_session_limit(self) -> None:
        if len(self.sessions) >= self.config.max_sessions:
            raise SessionLimitExceeded()

    def _new_session(self, req_session_id: int, cert_hash: bytes, psk: bool,
                     secured_version: int, th_prefix: bytes | None = None) -> Session:
        a = self.conn.algorithms
        sid = self._new_session_id(req_session_id)
        ks = KeySchedule(self.conn.version, a.base_hash, a.aead, psk_salt=self.config.psk_salt)
        return Session(
            session_id=sid,
            version=self.conn.version,
            algorithms=a,
            transcript=SessionTranscript(
                bytes(self.transcript.vca) if th_prefix is None else th_prefix, cert_hash),
            key_schedule=ks,
            psk=psk,
            mac_only=self.conn.mac_only,
            handshake_in_clear=self.conn.handshake_in_clear and not psk,
            secured_version=secured_version,
            transport=self.config.transport,
            random=self.config.random,
            last_activity=self.config.monotonic() if self.config.monotonic else None,
        )

    def _heartbeat_period(self) -> int:
        if self.conn.both(ReqCap.HBEAT, RspCap.HBEAT):
            return self.config.heartbeat_period
        return 0

    def _key_exchange(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        self._require_cap(Req.KEY_EXCHANGE, RspCap.KEY_EX, ReqCap.KEY_EX)
        a = self.conn.algorithms
        if not (a.dhe or a.kem) or not a.aead:
            raise UnexpectedRequest("no DHE/KEM and AEAD negotiated")
        msg = self._decode(KeyExchange, request, exchange_size=a.req_exchange_size)
        request = msg.raw
        slot = msg.param2
        self.slot_for(slot, KeyUsage.KEY_EX)
        summary = self._meas_summary(msg.param1)
        self._check_session_limit()
        secured_version = self._select_secured_version(msg.opaque)
        try:
            if a.kem:
                # DSP0274 1.4 KEY_EXCHANGE: encapsulate to the requester's key; the
                # ciphertext is this response's ExchangeData.
                shared, exchange_data = crypto.kem_encapsulate(a.kem, msg.exchange_data)
            else:
                dhe = crypto.DheKey(a.dhe, self.config.random)
                shared = dhe.shared_secret(msg.exchange_data)
                exchange_data = dhe.exchange_data()
        except crypto.CryptoError as exc:
            raise InvalidRequest(str(exc)) from exc
        cert_hash = crypto.digest(a.base_hash, self._chain(slot))
        sess = self._new_session(msg.req_session_id, cert_hash, False, secured_version,
                                 th_prefix=self.transcript.th_prefix(self.conn.multi_key))
        mut = 0
        # Mutual authentication only when configured AND the requester advertised
        # MUT_AUTH_CAP (docs/protocols.md §8.3). With ENCAP_CAP on both sides the
        # requester's chain is fetched with the encapsulated flow; otherwise it must be
        # known beforehand.
        if (
            self.config.mut_auth
            and self.conn.both(ReqCap.MUT_AUTH, RspCap.MUT_AUTH)
            and a.req_base_asym
        ):
            if self.conn.both(ReqCap.ENCAP, RspCap.ENCAP) and self.config.requester_trust_anchors:
                mut = MUT_AUTH_WITH_ENCAP_REQUEST
                sess.encap = _EncapState()
            elif self.config.requester_chain_der:
                mut = MUT_AUTH_REQUESTED
                req_chain = spdm_cert_chain(self.config.requester_chain_der, a.base_hash)
                sess.transcript.req_cert_chain_hash = crypto.digest(a.base_hash, req_chain)
                sess.req_public_key = x509.load_der_x509_certificate(
                    self.config.requester_chain_der[-1]).public_key()
        sess.mut_auth = mut
        sess.heartbeat_period = self._heartbeat_period()
        fields = {
            "version": self.conn.version,
            "param1": sess.heartbeat_period,
            "rsp_session_id": sess.session_id >> 16,
            "mut_auth_requested": mut,
            "req_slot_id_param": 0,
            "random": self.config.random(32),
            "exchange_data": exchange_data,
            "meas_summary_hash": summary,
            "opaque": opaque.build_version_selection(secured_version,
                                                     fmt1=self.conn.opaque_fmt1),
            "signature": b"",
            "verify_data": b"",
        }
        partial = encode(KeyExchangeRsp, fields, exchange_size=a.rsp_exchange_size,
                         meas_summary_size=len(summary))
        sess.transcript.k += request + partial
        sig = self._sign(slot, crypto.CTX_KEY_EXCHANGE_RSP, sess.transcript.th_k())
        sess.transcript.k += sig
        th1 = crypto.digest(a.base_hash, sess.transcript.th_k())
        self._reveal("DHE Secret", shared)
        sess.install_handshake_keys(shared, th1)
        verify = b""
        if not sess.handshake_in_clear:
            verify = sess.hmac_th(sess.rsp_finished_key, sess.transcript.th_k())
            sess.transcript.k += verify
        self.sessions[sess.session_id] = sess
        if sess.handshake_in_clear:
            self._handshake_clear_session = sess
        return partial + sig + verify

    def _finish(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        assert session is not None
        a = self.conn.algorithms
        sig_present = bool(hdr.param1 & FINISH_ATTR_SIGNATURE)
        if sig_present != bool(session.mut_auth):
            raise InvalidRequest("FINISH signature presence disagrees with MutAuthRequested")
        sig_size = a.req_sig_size if sig_present else 0
        msg = self._decode(Finish, request, hash_size=a.hash_size, sig_size=sig_size)
        request = msg.raw
        self._check_opaque(msg.opaque)
        th = session.transcript.th()
        if session.encap is not None and not session.encap.done:
            raise UnexpectedRequest("FINISH before the encapsulated flow completed")
        if sig_present and hdr.param2 != session.req_slot_id:
            raise InvalidRequest("FINISH ReqSlotID differs from the negotiated slot")
        # Header (and from 1.4 OpaqueDataLength/OpaqueData): what is signed, then MACed
        # with the signature (DSP0274 1.4 §10.15).
        before_sig = request[: len(request) - sig_size - a.hash_size]
        if sig_present:
            signed = th + before_sig
            m = crypto.message_to_sign(session.version, a.base_hash, crypto.CTX_FINISH, signed)
            if not crypto.verify(a.req_signer, a.base_hash, session.req_public_key, m,
                                 msg.signature, crypto.CTX_FINISH):
                raise DecryptError("FINISH signature invalid")
        expected = session.hmac_th(session.req_finished_key, th + before_sig + msg.signature)
        if not crypto.hmac_compare(expected, msg.verify_data):
            raise DecryptError("RequesterVerifyData mismatch")
        session.transcript.f += request
        fields = {"version": self.conn.version, "opaque": b"", "verify_data": b""}
        verify_size = 0
        if session.handshake_in_clear:
            hdr_bytes = encode(FinishRsp, fields)
            fields["verify_data"] = session.hmac_th(session.rsp_finished_key,
                                                    session.transcript.th() + hdr_bytes)
            verify_size = a.hash_size
        resp = encode(FinishRsp, fields, verify_size=verify_size)
        session.transcript.f += resp
        th2 = crypto.digest(a.base_hash, session.transcript.th())

        def activate() -> None:
            self._establish(session, th2)
            if self._handshake_clear_session is session:
                self._handshake_clear_session = None

        self._after_send.append(activate)
        return resp

    def _psk_exchange(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        self._require_cap(Req.PSK_EXCHANGE, RspCap.PSK | RspCap.PSK_WITH_CONTEXT, ReqCap.PSK)
        a = self.conn.algorithms
        if not a.aead:
            raise UnexpectedRequest("no AEAD negotiated")
        msg = self._decode(PskExchange, request)
        request = msg.raw
        summary = self._meas_summary(msg.param1)
        self._check_session_limit()
        psk = self.config.psks.get(bytes(msg.psk_hint))
        if not psk:
            raise InvalidRequest(f"no PSK for hint {psk_mod.describe_hint(bytes(msg.psk_hint))}")
        secured_version = self._select_secured_version(msg.opaque)
        sess = self._new_session(msg.req_session_id, b"", True, secured_version)
        sess.heartbeat_period = self._heartbeat_period()
        with_context = bool(self.conn.rsp_caps & RspCap.PSK_WITH_CONTEXT)
        fields = {
            "version": self.conn.version,
            "param1": sess.heartbeat_period,
            "rsp_session_id": sess.session_id >> 16,
            "meas_summary_hash": summary,
            "context": self.config.random(a.hash_size) if with_context else b"",
            "opaque": opaque.build_version_selection(secured_version,
                                                     fmt1=self.conn.opaque_fmt1),
            "verify_data": b"",
        }
        partial = encode(PskExchangeRsp, fields, meas_summary_size=len(summary))
        sess.transcript.k += request + partial
        th1 = crypto.digest(a.base_hash, sess.transcript.th_k())
        self._reveal("PSK", psk)
        sess.install_handshake_keys(psk, th1)
        verify = sess.hmac_th(sess.rsp_finished_key, sess.transcript.th_k())
        sess.transcript.k += verify
        self.sessions[sess.session_id] = sess
        if not with_context:
            # DSP0274 PSK_EXCHANGE: without responder context there is no PSK_FINISH; the
            # session enters the application phase with TH2 = TH over PSK_EXCHANGE_RSP.
            th2 = crypto.digest(a.base_hash, sess.transcript.th())
            self._after_send.append(lambda: self._establish(sess, th2))
        return partial + verify

    def _psk_finish(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        assert session is not None
        if not session.psk:
            raise UnexpectedRequest("PSK_FINISH on a KEY_EXCHANGE session")
        a = self.conn.algorithms
        msg = self._decode(PskFinish, request, hash_size=a.hash_size)
        request = msg.raw
        self._check_opaque(msg.opaque)
        expected = session.hmac_th(session.req_finished_key,
                                   session.transcript.th() + request[: -a.hash_size])
        if not crypto.hmac_compare(expected, msg.verify_data):
            raise DecryptError("RequesterVerifyData mismatch")
        session.transcript.f += request
        resp = encode(PskFinishRsp, {"version": self.conn.version, "opaque": b""})
        session.transcript.f += resp
        th2 = crypto.digest(a.base_hash, session.transcript.th())
        self._after_send.append(lambda: self._establish(session, th2))
        return resp

    def _heartbeat(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        self._require_cap(Req.HEARTBEAT, RspCap.HBEAT, ReqCap.HBEAT)
        request = self._decode(Heartbeat, request).raw
        return encode(HeartbeatAck, {"version": self.conn.version})

    def _key_update(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        """DSP0274 1.2 KEY_UPDATE. Key activation follows libspdm (libspdm_rsp_key_update.c /
        libspdm_req_key_update.c): UpdateKey switches the request direction for the next
        request; UpdateAllKeys also switches the response direction *before* the ACK, so the
        ACK travels under the new response key; VerifyNewKey is only valid after an update,
        and an update must be verified before the next one. A retransmission (same
        operation and tag) is acknowledged without deriving again."""
        assert session is not None
        self._require_cap(Req.KEY_UPDATE, RspCap.KEY_UPD, ReqCap.KEY_UPD)
        msg = self._decode(KeyUpdate, request)
        request = msg.raw
        op, tag = msg.param1, msg.param2
        last = session.last_key_update_tag
        if last is not None and (op, tag) == last:
            pass  # retransmission
        elif op in (KEY_UPDATE_UPDATE_KEY, KEY_UPDATE_UPDATE_ALL_KEYS):
            if last is not None and last[0] in (KEY_UPDATE_UPDATE_KEY,
                                                KEY_UPDATE_UPDATE_ALL_KEYS):
                raise InvalidRequest("previous key update not yet verified")
            session.update_req_keys()
            if op == KEY_UPDATE_UPDATE_ALL_KEYS:
                session.update_rsp_keys()
        elif op == KEY_UPDATE_VERIFY_NEW_KEY:
            if last is None or last[0] not in (KEY_UPDATE_UPDATE_KEY,
                                               KEY_UPDATE_UPDATE_ALL_KEYS):
                raise InvalidRequest("VerifyNewKey without a preceding update")
        else:
            raise InvalidRequest("bad KEY_UPDATE operation")
        session.last_key_update_tag = (op, tag)
        return encode(KeyUpdateAck, {"version": self.conn.version, "param1": op,
                                     "param2": tag})

    def _end_session(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        assert session is not None
        request = self._decode(EndSession, request).raw
        resp = encode(EndSessionAck, {"version": self.conn.version})

        self._after_send.append(lambda: self._drop_session(session))
        return resp

    # ---- vendor defined ------------------------------------------------------------------------

    def _vendor_defined(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        msg = self._decode(VendorDefinedRequest, request)
        request = msg.raw
        payload = bytes(msg.payload)
        vid = bytes(msg.vendor_id)
        handler = None
        if payload:
            handler = self._vendor.get((msg.standard_id, vid, payload[0]))
        if handler is None:
            handler = self._vendor.get((msg.standard_id, vid, None))
        if handler is None:
            raise UnsupportedRequest(Req.VENDOR_DEFINED_REQUEST, "no vendor handler")
        ctx = VendorRequestContext(msg.standard_id, vid,
                                   session.session_id if session else None, self.conn.version)
        out = handler(payload, ctx)  # an SpdmError it raises is answered as ERROR
        return encode(
            VendorDefinedResponse,
            {"version": self.conn.version, "standard_id": msg.standard_id, "vendor_id": vid,
             "payload": out},
        )

    # ---- encapsulated requests for mutual authentication (DSP0274 GET_ENCAPSULATED_REQUEST)

    ENCAP_CERT_PORTION = 0x400

    def _encap_state(self, session: Session | None) -> _EncapState:
        if session is None or session.encap is None or session.encap.done:
            raise UnexpectedRequest("no encapsulated flow in progress")
        st: _EncapState = session.encap
        return st

    def _next_encap_id(self, st: _EncapState) -> int:
        st.request_id = (st.request_id % 0xFF) + 1
        return st.request_id

    def _get_encapsulated_request(self, request: bytes, hdr: Any,
                                  session: Session | None) -> bytes:
        self._require_cap(Req.GET_ENCAPSULATED_REQUEST, RspCap.ENCAP, ReqCap.ENCAP)
        request = self._decode(GetEncapsulatedRequest, request).raw
        st = self._encap_state(session)
        if st.expecting:
            raise UnexpectedRequest("encapsulated flow already started")
        st.expecting = Req.GET_DIGESTS
        inner = encode(GetDigests, {"version": self.conn.version})
        return encode(EncapsulatedRequest, {"version": self.conn.version,
                                            "param1": self._next_encap_id(st),
                                            "request": inner})

    def _deliver_encapsulated_response(self, request: bytes, hdr: Any,
                                       session: Session | None) -> bytes:
        self._require_cap(Req.DELIVER_ENCAPSULATED_RESPONSE, RspCap.ENCAP, ReqCap.ENCAP)
        assert session is not None
        st = self._encap_state(session)
        msg = self._decode(DeliverEncapsulatedResponse, request)
        request = msg.raw
        if not st.expecting or msg.param1 != st.request_id:
            raise InvalidRequest("RequestID does not match the outstanding request")
        inner = bytes(msg.response)
        a = self.conn.algorithms
        try:
            ih = header(inner)
            if ih.version != self.conn.version or ih.code == Rsp.ERROR:
                raise InvalidRequest("encapsulated response is an error or wrong version")
            if st.expecting == Req.GET_DIGESTS:
                dg = decode(Digests, inner, hash_size=a.hash_size)
                if not dg.param2:
                    raise InvalidRequest("requester has no certificate slots")
                st.slot = (dg.param2 & -dg.param2).bit_length() - 1
                st.digest = bytes(dg.digests[0])
            else:
                ct = decode(Certificate, inner)
                if ct.param1 & 0x0F != st.slot or not ct.portion_length:
                    raise InvalidRequest("bad encapsulated CERTIFICATE")
                st.chain += ct.cert_chain
                if ct.remainder_length == 0:
                    return self._encap_finish(session, st, msg.param1)
        except MessageFormatError as exc:
            raise InvalidRequest(f"malformed encapsulated response: {exc}") from exc
        st.expecting = Req.GET_CERTIFICATE
        inner_req = encode(GetCertificate, {"version": self.conn.version, "param1": st.slot,
                                            "offset": len(st.chain),
                                            "length": self.ENCAP_CERT_PORTION})
        return encode(EncapsulatedResponseAck, {
            "version": self.conn.version, "param1": self._next_encap_id(st), "param2": 1,
            "ack_request_id": msg.param1, "request": inner_req})

    def _encap_finish(self, session: Session, st: _EncapState, ack_id: int) -> bytes:
        a = self.conn.algorithms
        chain = bytes(st.chain)
        if crypto.digest(a.base_hash, chain) != st.digest:
            raise InvalidRequest("requester chain does not match its digest")
        try:
            session.req_public_key = verify_chain(
                chain, self.config.requester_trust_anchors, a.base_hash, a.req_signer,
                now=self.config.now(),
                policy=CertPolicy(role_eku=OID_EKU_REQUESTER_AUTH,
                                  other_role_eku=OID_EKU_RESPONDER_AUTH),
            )
        except CertificateError as exc:
            raise InvalidRequest(f"requester certificate rejected: {exc}") from exc
        session.transcript.req_cert_chain_hash = crypto.digest(a.base_hash, chain)
        session.req_slot_id = st.slot
        st.done = True
        # PayloadType 2 = ReqSlotNumber: the slot the requester signs FINISH with.
        return encode(EncapsulatedResponseAck, {
            "version": self.conn.version, "param1": 0, "param2": 2,
            "ack_request_id": ack_id, "request": bytes([st.slot])})

    # ---- chunking (DSP0274 1.2 CHUNK_SEND / CHUNK_GET) -------------------------------------------

    def _chunk_send(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        """DSP0274 1.2+ CHUNK_SEND.  A chunk that breaks the sequence is answered with
        CHUNK_SEND_ACK EarlyErrorDetected carrying the ERROR, and the transfer is dropped
        (DSP0274 CHUNK_SEND_ACK, as libspdm's responder does); LargeMessageSize above our
        MaxSPDMmsgSize is ERROR RequestTooLarge there.  An error in the reassembled
        request itself is the ordinary response inside the last CHUNK_SEND_ACK."""
        if not self.conn.chunking:
            raise UnsupportedRequest(Req.CHUNK_SEND)
        msg = self._decode(ChunkSend, request)  # malformed: a plain ERROR InvalidRequest
        request = msg.raw
        try:
            st = self._send_chunks
            if msg.chunk_seq_no == 0:
                if st is not None:
                    raise InvalidRequest("new chunk sequence while one is in progress")
                if msg.large_message_size > self.config.max_spdm_msg_size:
                    raise RequestTooLarge(
                        f"LargeMessageSize {msg.large_message_size} above MaxSPDMmsgSize "
                        f"{self.config.max_spdm_msg_size}")
                if msg.large_message_size <= self.config.data_transfer_size:
                    raise InvalidRequest("LargeMessageSize fits DataTransferSize")
                st = _ChunkSendState(msg.param2, 0, msg.large_message_size, bytearray())
                self._send_chunks = st
            elif st is None or msg.param2 != st.handle or msg.chunk_seq_no != st.expected_seq:
                raise InvalidRequest("chunk out of sequence")
            if not msg.chunk:
                raise InvalidRequest("empty chunk")
            st.data += msg.chunk
            st.expected_seq += 1
            if len(st.data) > st.large_size:
                raise InvalidRequest("chunks exceed LargeMessageSize")
            last = bool(msg.param1 & CHUNK_ATTR_LAST)
            if last and len(st.data) != st.large_size:
                raise InvalidRequest("last chunk before LargeMessageSize reached")
            if not last and len(st.data) == st.large_size:
                raise InvalidRequest("LargeMessageSize reached without LastChunk")
        except RequestRefused as exc:
            self._send_chunks = None
            return encode(ChunkSendAck, {
                "version": self.conn.version, "param1": CHUNK_ACK_EARLY_ERROR,
                "param2": msg.param2, "chunk_seq_no": msg.chunk_seq_no,
                "response": self._error_msg(exc.code, exc.data, exc.extended)})
        embedded = b""
        if last:
            self._send_chunks = None
            large = bytes(st.data)
            self._dword_padding = False  # the reassembled message is exact
            before = set(self.sessions)
            try:
                h = header(large)
                embedded = self._dispatch_large(large, h, session)
            except SpdmError as exc:
                self._after_send.clear()
                self._forget_new_sessions(before)
                embedded = self._error_msg(exc.code, exc.data, exc.extended)
            out = self._maybe_large(
                embedded, 0, overhead=chunk_send_ack_header_size(self.conn.version))
            if out is not embedded and out[2] == ErrorCode.RESPONSE_TOO_LARGE:
                self._forget_new_sessions(before)
            embedded = out
        return encode(
            ChunkSendAck,
            {"version": self.conn.version, "param2": st.handle,
             "chunk_seq_no": msg.chunk_seq_no, "response": embedded},
        )

    def _dispatch_large(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        # The reassembled request is processed as if it arrived whole; the size limit that
        # forced chunking does not apply to it.
        self._reassembled = True
        try:
            return self._dispatch(request, hdr, session)
        finally:
            self._reassembled = False

    def _chunk_get(self, request: bytes, hdr: Any, session: Session | None) -> bytes:
        if not self.conn.chunking:
            raise UnsupportedRequest(Req.CHUNK_GET)
        msg = self._decode(ChunkGet, request)
        request = msg.raw
        st = self._get_chunks
        if st is None or msg.param2 != st.handle:
            raise InvalidRequest("no large response with this handle")
        if msg.chunk_seq_no != st.next_seq:
            raise InvalidRequest("CHUNK_GET out of sequence")
        room = self.conn.req_data_transfer_size - CHUNK_RESPONSE_HEADER_SIZE
        if st.next_seq == 0:
            room -= 4
        chunk = st.data[st.offset : st.offset + room]
        st.offset += len(chunk)
        last = st.offset >= len(st.data)
        fields: dict[str, Any] = {
            "version": self.conn.version, "param1": CHUNK_ATTR_LAST if last else 0,
            "param2": st.handle, "chunk_seq_no": st.next_seq, "chunk": chunk,
        }
        if st.next_seq == 0:
            fields["large_message_size"] = len(st.data)
        st.next_seq += 1
        if last:
            self._get_chunks = None
        return encode(ChunkResponse, fields)
