"""Sans-IO SPDM requester.

Every operation is an `Operation`: a small driver around a generator that yields the next
wire object and consumes the peer's reply. The caller owns the transport:

    req = Requester(RequesterConfig(trust_anchors=[root]))
    op = req.init_connection()
    while not op.done:
        out = op.request                 # Outgoing(data, secured, session_id)
        reply = transport(out)           # DOE type 2 if out.secured else type 1
        op.feed(reply)
    result = op.result

or simply `req.run(op, transport)`. ResponseNotReady/RESPOND_IF_READY, Busy retries,
CHUNK_GET for large responses and CHUNK_SEND for large requests are handled inside the
operations. Every response is validated; failures raise PeerError subclasses.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from spdm import algorithms as alg
from spdm import crypto, opaque
from spdm import req_provisioning as req_prov
from spdm.algorithms import AlgType, NegotiatedAlgorithms
from spdm.cert_verify import CertPolicy, system_time, verify_chain
from spdm.codes import (
    KEY_UPDATE_UPDATE_ALL_KEYS,
    KEY_UPDATE_UPDATE_KEY,
    KEY_UPDATE_VERIFY_NEW_KEY,
    MEAS_CAP_MASK,
    MEAS_SPEC_DMTF,
    MEAS_SUMMARY_NONE,
    MEL_SPEC_DMTF,
    MULTI_KEY_CONN,
    MUT_AUTH_REQUESTED,
    MUT_AUTH_WITH_ENCAP_REQUEST,
    OPAQUE_FMT_1,
    PSK_CAP_MASK,
    SUPPORTED_VERSIONS,
    V10,
    V11,
    V12,
    V13,
    V14,
    ErrorCode,
    Req,
    ReqCap,
    Rsp,
    RspCap,
    rsp_caps_for_version,
    version_from_entry,
)
from spdm.errors import (
    CertificateError,
    ErrorResponse,
    ForeignPayload,
    PeerError,
    RecordAuthenticationError,
    RecordError,
    RequestTooLarge,
    VerificationError,
)
from spdm.hooks import RequesterHooks
from spdm.identity import DeviceIdentity
from spdm.key_schedule import KeySchedule
from spdm.measurements import ParsedBlock, parse_record
from spdm.messages import (
    CERTIFICATE_HEADER_SIZE,
    CHUNK_ATTR_LAST,
    CHUNK_SEND_HEADER_SIZE,
    FINISH_ATTR_SIGNATURE,
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
    VendorDefinedRequest,
    VendorDefinedResponse,
    Version,
    decode,
    encode,
    header,
)
from spdm.negotiation import ConnectionInfo
from spdm.secured_message import DOE_TRANSPORT, TransportParams, peek_session_id
from spdm.session import Session
from spdm.state import SessionState
from spdm.transcript import ConnectionTranscript, SessionTranscript, reset_for_request

DEFAULT_REQ_CAPS = (
    ReqCap.CERT
    | ReqCap.CHAL
    | ReqCap.ENCRYPT
    | ReqCap.MAC
    | ReqCap.KEY_EX
    | ReqCap.PSK
    | ReqCap.HBEAT
    | ReqCap.KEY_UPD
    | ReqCap.CHUNK
)


@dataclass(frozen=True)
class Outgoing:
    """One request on the wire: an SPDM message, or a DSP0277 record when `secured`."""

    data: bytes
    secured: bool = False
    session_id: int | None = None
    # After ResponseNotReady: wait this long before sending (RDT = 2^RDTExponent us times
    # RDTM, DSP0274 ERROR ResponseNotReady extended data); the sans-IO engine never sleeps itself.
    delay_us: int = 0

    @property
    def doe_type(self) -> int:
        return 2 if self.secured else 1


@dataclass
class AlgorithmOffer:
    """What NEGOTIATE_ALGORITHMS offers, as bit masks of each field (DSP0274).  The
    post-quantum fields (PqcAsymAlgo, KEMAlg, ReqPqcAsymAlg) go on the wire from SPDM 1.4
    on (DSP0274 1.4 §10.4); the responder then picks one family of each pair."""

    base_asym: int = alg.mask_of(alg.SUPPORTED_ASYM)
    base_hash: int = alg.mask_of(alg.SUPPORTED_HASH)
    dhe: int = alg.mask_of(alg.SUPPORTED_DHE)
    aead: int = alg.mask_of(alg.SUPPORTED_AEAD)
    req_base_asym: int = alg.mask_of(alg.SUPPORTED_ASYM)
    pqc_asym: int = alg.mask_of(alg.SUPPORTED_PQC_ASYM)
    kem: int = alg.mask_of(alg.SUPPORTED_KEM)
    req_pqc_asym: int = alg.mask_of(alg.SUPPORTED_PQC_ASYM)


@dataclass
class RequesterConfig:
    """How the requester speaks SPDM.  Observers are not settings: they are
    `spdm.hooks.RequesterHooks`, given to the Requester beside this."""

    # -- GET_VERSION / GET_CAPABILITIES / NEGOTIATE_ALGORITHMS
    versions: Sequence[int] = (V10, V11, V12, V13, V14)
    capabilities: int = int(DEFAULT_REQ_CAPS)
    ct_exponent: int = 12
    data_transfer_size: int = 4096
    max_spdm_msg_size: int = 65536
    algorithms: AlgorithmOffer = field(default_factory=AlgorithmOffer)
    other_params: int = OPAQUE_FMT_1
    # 1.3: ask for a multi-key connection (ResponderMultiKeyConn, OtherParamsSupport bit
    # 4): with a MULTI_KEY_CAP 10b responder every slot's key can be used, and DIGESTS
    # says which key pair and usages each slot has.
    multi_key: bool = False
    busy_retries: int = 3
    # -- authenticating the responder
    trust_anchors: Sequence[x509.Certificate] = ()
    cert_policy: CertPolicy = field(default_factory=CertPolicy)
    # -- our own identity (mutual authentication) and pre-shared keys (hint -> PSK)
    identity: DeviceIdentity | None = None
    psk: dict[bytes, bytes] = field(default_factory=dict)
    # -- sessions
    secured_versions: Sequence[int] = opaque.DEFAULT_SECURED_VERSIONS
    transport: TransportParams = field(default_factory=lambda: DOE_TRANSPORT)
    # -- injected sources: the engine reads no clock and draws no randomness of its own
    random: Callable[[int], bytes] = os.urandom
    # Wall clock for the validity of the responder's certificates.
    now: Callable[[], datetime.datetime] = system_time


Gen = Generator[Outgoing, bytes, Any]


class Operation:
    """Drives one requester flow: read `request`, send it, `feed` the reply, until `done`."""

    def __init__(self, gen: Gen) -> None:
        self._gen = gen
        self.done = False
        self.result: Any = None
        self.request: Outgoing | None = None
        self._step(None)

    def _step(self, value: bytes | None) -> None:
        try:
            self.request = self._gen.send(value) if value is not None else next(self._gen)
        except StopIteration as stop:
            self.done = True
            self.request = None
            self.result = stop.value

    def feed(self, response: bytes) -> None:
        if self.done:
            raise RuntimeError("operation already complete")
        self._step(response)


def _fail(msg: str) -> PeerError:
    return PeerError(msg)


class Requester:
    def __init__(
        self, config: RequesterConfig | None = None, hooks: RequesterHooks | None = None
    ) -> None:
        self.config = config or RequesterConfig()
        self.hooks = hooks or RequesterHooks()
        self.conn = ConnectionInfo()
        self.transcript = ConnectionTranscript()
        self.authenticated = False  # a CHALLENGE completed on this connection
        self.sessions: dict[int, Session] = {}
        self.digests: dict[int, bytes] = {}
        # 1.3 DIGESTS: SupportedSlotMask, and on a multi-key connection per slot
        # (KeyPairID, CertificateInfo, KeyUsageMask).
        self.supported_slot_mask = 0
        self.slot_key_info: dict[int, tuple[int, int, int]] = {}
        self.cert_chains: dict[int, bytes] = {}
        self.leaf_keys: dict[int, crypto.PublicKey] = {}
        self.measurements: dict[int, ParsedBlock] = {}
        self.measurement_count = 0
        self.last_signed_measurements = False
        self._next_req_session = 1

    # ---- public helpers ------------------------------------------------------------------

    @property
    def algorithms(self) -> NegotiatedAlgorithms:
        return self.conn.algorithms

    @property
    def version(self) -> int:
        return self.conn.version

    def run(self, op: Operation, transport: Callable[[Outgoing], bytes]) -> Any:
        while not op.done:
            assert op.request is not None
            op.feed(transport(op.request))
        return op.result

    def _reveal(self, label: str, secret: bytes) -> None:
        if self.hooks.secret_sink is not None:
            self.hooks.secret_sink(label, secret)

    def _observe(self, direction: str, session: Session, plaintext: bytes) -> None:
        if self.hooks.message_observer is not None:
            self.hooks.message_observer(direction, session.session_id, plaintext)


    # ---- transport core --------------------------------------------------------------------

    def _exchange(
        self, msg: bytes, session: Session | None = None, *, expect: int, clear: bool = False
    ) -> Gen:
        """Send *msg* (sealed when a session is given and not `clear`); return the
        response message, resolving ResponseNotReady, Busy and LargeResponse."""
        reset_for_request(self.transcript, session.transcript.m if session else None, msg[1],
                          self.authenticated)
        if (
            self.conn.version >= V12
            and self.conn.rsp_data_transfer_size
            and len(msg) > self.conn.rsp_data_transfer_size
        ):
            # DSP0274 GET_CAPABILITIES: nothing larger than the peer's MaxSPDMmsgSize is
            # sent at all, chunked or not; without CHUNK_CAP on both sides, nothing larger
            # than its DataTransferSize.
            if not self.conn.chunking or len(msg) > self.conn.rsp_max_msg_size:
                limit = ("MaxSPDMmsgSize" if self.conn.chunking else "DataTransferSize")
                raise RequestTooLarge(
                    f"{len(msg)}-byte request exceeds the responder's {limit}")
            resp = yield from self._chunk_send(msg, session, clear)
        else:
            resp = yield from self._roundtrip(msg, session, clear)
        busy = 0
        while True:
            hdr = self._header(resp)
            if hdr.code != Rsp.ERROR:
                break
            err = decode(Error, resp)
            code = err.param1
            if code == ErrorCode.RESPONSE_NOT_READY:
                ext = decode(ResponseNotReadyData, err.extended)
                if ext.request_code != msg[1]:
                    raise _fail("ResponseNotReady for another request")
                rif = encode(RespondIfReady, {"version": self.conn.version,
                                              "param1": ext.request_code,
                                              "param2": ext.token})
                delay = (1 << min(ext.rdt_exponent, 40)) * max(ext.rdtm, 1)
                resp = yield from self._roundtrip(rif, session, clear, delay_us=delay)
                continue
            if code == ErrorCode.BUSY and busy < self.config.busy_retries:
                busy += 1
                resp = yield from self._roundtrip(msg, session, clear)
                continue
            if code == ErrorCode.LARGE_RESPONSE and self.conn.chunking:
                # ExtendedErrorData is the 1-byte Handle; over DOE the object's padding
                # to a DWORD follows it (docs/protocols.md §2).
                handle = decode(LargeResponseData, bytes(err.extended),
                                dword_padding=len(resp) % 4 == 0).handle
                resp = yield from self._chunk_get(handle, session, clear)
                continue
            raise ErrorResponse(code, err.param2, bytes(err.extended))
        if hdr.code != expect:
            raise _fail(f"expected response 0x{expect:02x}, got 0x{hdr.code:02x}")
        if hdr.version != (self.conn.version or V10):
            raise _fail("response SPDMVersion differs from the negotiated version")
        return resp

    def _header(self, resp: bytes) -> Any:
        try:
            return header(resp)
        except MessageFormatError as exc:
            raise _fail("response shorter than an SPDM header") from exc

    def _roundtrip(self, msg: bytes, session: Session | None, clear: bool,
                   delay_us: int = 0) -> Gen:
        if session is None or clear:
            raw = yield Outgoing(msg, False, session.session_id if session else None,
                                 delay_us)
            return raw
        self._observe("request", session, msg)
        record = session.seal(msg, from_requester=True)
        raw = yield Outgoing(record, True, session.session_id, delay_us)
        if len(raw) < 4 or peek_session_id(raw) != session.session_id:
            # Not a record of this session: the responder could not open ours and answered
            # with a plaintext ERROR (a type-1 DOE object, as libspdm does).
            if len(raw) >= 4 and raw[1] == Rsp.ERROR:
                return raw
            raise _fail("response is neither a record of this session nor an ERROR")
        try:
            plaintext = session.open(raw, from_requester=False)
        except RecordError as exc:
            raise RecordAuthenticationError(f"cannot authenticate response record: {exc}") from exc
        except ForeignPayload as exc:
            raise _fail(f"response record: {exc}") from exc
        self._observe("response", session, plaintext)
        return plaintext

    def _chunk_send(self, msg: bytes, session: Session | None, clear: bool) -> Gen:
        """DSP0274 1.2 CHUNK_SEND: split a large request into CHUNK_SEND messages."""
        handle = self.config.random(1)[0]
        dts = self.conn.rsp_data_transfer_size
        pos, seq = 0, 0
        while True:
            room = dts - CHUNK_SEND_HEADER_SIZE - (4 if seq == 0 else 0)
            chunk = msg[pos : pos + room]
            pos += len(chunk)
            last = pos >= len(msg)
            fields: dict[str, Any] = {"version": self.conn.version,
                                      "param1": CHUNK_ATTR_LAST if last else 0,
                                      "param2": handle, "chunk_seq_no": seq, "chunk": chunk}
            if seq == 0:
                fields["large_message_size"] = len(msg)
            raw = yield from self._roundtrip(encode(ChunkSend, fields), session, clear)
            hdr = self._header(raw)
            if hdr.code == Rsp.ERROR:
                return raw
            ack = self._decode(ChunkSendAck, raw)
            if ack.param2 != handle or ack.chunk_seq_no != seq:
                raise _fail("CHUNK_SEND_ACK handle/sequence mismatch")
            if ack.param1 & 1:  # EarlyErrorDetected
                return bytes(ack.response)
            if last:
                if not ack.response:
                    raise _fail("last CHUNK_SEND_ACK without a response")
                return bytes(ack.response)
            if ack.response:
                raise _fail("CHUNK_SEND_ACK carried a response before the last chunk")
            seq += 1

    def _chunk_get(self, handle: int, session: Session | None, clear: bool) -> Gen:
        data = bytearray()
        seq = 0
        total: int | None = None
        while True:
            req = encode(ChunkGet, {"version": self.conn.version, "param2": handle,
                                    "chunk_seq_no": seq})
            raw = yield from self._roundtrip(req, session, clear)
            hdr = self._header(raw)
            if hdr.code == Rsp.ERROR:
                err = decode(Error, raw)
                raise ErrorResponse(err.param1, err.param2, bytes(err.extended))
            rsp = self._decode(ChunkResponse, raw)
            if rsp.param2 != handle or rsp.chunk_seq_no != seq:
                raise _fail("CHUNK_RESPONSE handle/sequence mismatch")
            if seq == 0:
                total = rsp.large_message_size
                if total is None or total > self.config.max_spdm_msg_size:
                    raise _fail("bad LargeMessageSize")
            data += rsp.chunk
            assert total is not None
            if len(data) > total:
                raise _fail("chunks exceed LargeMessageSize")
            if rsp.param1 & CHUNK_ATTR_LAST:
                if len(data) != total:
                    raise _fail("large response shorter than announced")
                return bytes(data)
            seq += 1

    @staticmethod
    def _decode(fmt: Any, data: bytes, **params: int) -> Any:
        """Decode a response; DOE DWORD padding is tolerated and `raw` (used for
        transcripts) excludes it."""
        try:
            return decode(fmt, data, dword_padding=True, **params)
        except MessageFormatError as exc:
            raise _fail(f"malformed response: {exc}") from exc

    # ---- VCA ------------------------------------------------------------------------------

    def get_version(self) -> Operation:
        return Operation(self._get_version())

    def _get_version(self) -> Gen:
        self.conn = ConnectionInfo()
        self.transcript.reset()
        self.authenticated = False
        self.sessions.clear()
        req = encode(GetVersion, {"version": V10})
        resp = yield from self._exchange(req, expect=Rsp.VERSION)
        msg = self._decode(Version, resp)
        resp = msg.raw
        offered = {version_from_entry(e) for e in msg.entries}
        if not offered:
            raise _fail("VERSION without entries")
        common = [v for v in self.config.versions if v in offered and v in SUPPORTED_VERSIONS]
        if not common:
            raise _fail("no common SPDM version")
        self.conn.version = max(common)
        self.transcript.vca += req + resp
        return self.conn.version

    def get_capabilities(self) -> Operation:
        return Operation(self._get_capabilities())

    def _get_capabilities(self) -> Gen:
        v = self.conn.version
        # The flags this version defines (the bit layout is shared with the responder's).
        caps = rsp_caps_for_version(self.config.capabilities, v)
        fields: dict[str, Any] = {"version": v, "ct_exponent": self.config.ct_exponent,
                                  "flags": caps}
        if v >= V12:
            fields["data_transfer_size"] = self.config.data_transfer_size
            fields["max_spdm_msg_size"] = self.config.max_spdm_msg_size
        req = encode(GetCapabilities, fields)
        resp = yield from self._exchange(req, expect=Rsp.CAPABILITIES)
        msg = self._decode(Capabilities, resp)
        resp = msg.raw
        flags = msg.flags
        if flags & MEAS_CAP_MASK == MEAS_CAP_MASK:
            raise _fail("MEAS_CAP 11b is reserved")
        if flags & PSK_CAP_MASK == PSK_CAP_MASK:
            raise _fail("PSK_CAP 11b is reserved")
        if v >= V12:
            if msg.data_transfer_size < 42 or msg.data_transfer_size > msg.max_spdm_msg_size:
                raise _fail("responder DataTransferSize invalid")
            self.conn.rsp_data_transfer_size = msg.data_transfer_size
            self.conn.rsp_max_msg_size = msg.max_spdm_msg_size
            self.conn.req_data_transfer_size = self.config.data_transfer_size
            self.conn.req_max_msg_size = self.config.max_spdm_msg_size
        self.conn.req_caps = caps
        self.conn.rsp_caps = flags
        self.conn.rsp_ct_exponent = msg.ct_exponent
        self.transcript.vca += req + resp
        return flags

    def negotiate_algorithms(self) -> Operation:
        return Operation(self._negotiate_algorithms())

    def _negotiate_algorithms(self) -> Gen:
        v = self.conn.version
        c = self.config
        offer = c.algorithms
        structs = []
        session_caps = c.capabilities & (ReqCap.KEY_EX | ReqCap.PSK)
        key_ex = bool(c.capabilities & ReqCap.KEY_EX)
        mut_auth = bool(c.capabilities & ReqCap.MUT_AUTH) and c.identity is not None
        own = c.identity.asym_mask() if mut_auth and c.identity is not None else 0
        pq = v >= V14
        # AlgStructs in ascending AlgType (DSP0274 §10.4); 6 and 7 exist from 1.4 on.
        if v >= V11:
            if session_caps:
                if key_ex:
                    structs.append({"alg_type": AlgType.DHE, "supported": offer.dhe})
                structs.append({"alg_type": AlgType.AEAD, "supported": offer.aead})
            if mut_auth and offer.req_base_asym & own & 0xFFFF:
                structs.append({"alg_type": AlgType.REQ_BASE_ASYM,
                                "supported": offer.req_base_asym & own & 0xFFFF})
            if session_caps:
                structs.append({"alg_type": AlgType.KEY_SCHEDULE,
                                "supported": int(alg.KeySchedule.SPDM)})
            req_pqc = offer.req_pqc_asym & (own >> alg.PQC_SHIFT) & 0xFFFF
            if pq and mut_auth and req_pqc:
                structs.append({"alg_type": AlgType.REQ_PQC_ASYM, "supported": req_pqc})
            if pq and key_ex and offer.kem:
                structs.append({"alg_type": AlgType.KEM, "supported": offer.kem})
        req = encode(NegotiateAlgorithms, {
            "version": v, "param1": len(structs), "meas_spec": MEAS_SPEC_DMTF,
            "other_params": ((c.other_params | (MULTI_KEY_CONN if c.multi_key and v >= V13
                                                else 0)) if v >= V12 else 0),
            "mel_spec": MEL_SPEC_DMTF if v >= V13 else 0,
            "base_asym": offer.base_asym, "base_hash": offer.base_hash,
            "pqc_asym": offer.pqc_asym if pq else 0, "alg_structs": structs,
        })
        resp = yield from self._exchange(req, expect=Rsp.ALGORITHMS)
        msg = self._decode(Algorithms, resp)
        resp = msg.raw
        if msg.length != len(resp):
            raise _fail("ALGORITHMS Length mismatch")
        rsp_caps = self.conn.rsp_caps
        if not alg.check_selected(msg.base_hash_sel, offer.base_hash):
            raise _fail("BaseHashSel invalid")
        needs_asym = rsp_caps & (RspCap.CERT | RspCap.CHAL | RspCap.MEAS_SIG | RspCap.KEY_EX)
        pqc_sel = msg.pqc_asym_sel if v >= V14 else 0  # reserved before 1.4
        if not alg.check_selected(msg.base_asym_sel, offer.base_asym, allow_zero=True):
            raise _fail("BaseAsymSel invalid")
        if not alg.check_selected(pqc_sel, offer.pqc_asym, allow_zero=True):
            raise _fail("PqcAsymSel invalid")
        # DSP0274 1.4 §10.4: one signature algorithm, from either family, when the
        # responder signs at all.
        if msg.base_asym_sel and pqc_sel:
            raise _fail("both BaseAsymSel and PqcAsymSel selected")
        if needs_asym and not (msg.base_asym_sel or pqc_sel):
            raise _fail("no signature algorithm selected (BaseAsymSel/PqcAsymSel)")
        if rsp_caps & MEAS_CAP_MASK:
            if msg.meas_spec_sel != MEAS_SPEC_DMTF:
                raise _fail("MeasurementSpecificationSel invalid")
            if not alg.is_single_bit(msg.meas_hash_algo):
                raise _fail("MeasurementHashAlgo must have exactly one bit")
            if msg.meas_hash_algo not in alg.MEAS_HASH_SIZE:
                raise _fail("unsupported MeasurementHashAlgo")
        elif msg.meas_hash_algo:
            raise _fail("MeasurementHashAlgo without MEAS_CAP")
        if v >= V12 and msg.other_params_sel & ~c.other_params & 0x0F:
            raise _fail("OtherParamsSel not offered")
        mel_spec = msg.mel_spec_sel if v >= V13 else 0
        if mel_spec & ~MEL_SPEC_DMTF or (mel_spec and not rsp_caps & RspCap.MEL):
            raise _fail("MELspecificationSel not offered, or without MEL_CAP")
        offered = {s["alg_type"]: s["supported"] for s in structs}
        sel: dict[int, int] = {}
        for s in msg.alg_structs:
            if s.alg_type not in offered or s.alg_type in sel:
                raise _fail("unexpected AlgStruct in ALGORITHMS")
            if not alg.check_selected(s.supported, offered[s.alg_type], allow_zero=True):
                raise _fail(f"AlgStruct {s.alg_type} selection invalid")
            sel[s.alg_type] = s.supported
        dhe, kem = sel.get(AlgType.DHE, 0), sel.get(AlgType.KEM, 0)
        if dhe and kem:
            raise _fail("both a DHE group and a KEM selected")
        if self.conn.both(ReqCap.KEY_EX, RspCap.KEY_EX) and not (
            (dhe or kem) and sel.get(AlgType.AEAD)
        ):
            raise _fail("KEY_EX negotiated without DHE/KEM and AEAD selection")
        if sel.get(AlgType.REQ_BASE_ASYM) and sel.get(AlgType.REQ_PQC_ASYM):
            raise _fail("both ReqBaseAsymAlg and ReqPqcAsymAlg selected")
        self.conn.algorithms = NegotiatedAlgorithms(
            meas_spec=msg.meas_spec_sel, other_params=msg.other_params_sel,
            meas_hash=msg.meas_hash_algo, base_asym=msg.base_asym_sel,
            base_hash=msg.base_hash_sel, dhe=dhe,
            aead=sel.get(AlgType.AEAD, 0), req_base_asym=sel.get(AlgType.REQ_BASE_ASYM, 0),
            key_schedule=sel.get(AlgType.KEY_SCHEDULE, 0), pqc_asym=pqc_sel, kem=kem,
            req_pqc_asym=sel.get(AlgType.REQ_PQC_ASYM, 0), mel_spec=mel_spec,
        )
        self.conn.resolve_multi_key(c.multi_key)
        self.transcript.vca += req + resp
        return self.conn.algorithms

    def init_connection(self) -> Operation:
        """GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS."""
        return Operation(self._init_connection())

    def _init_connection(self) -> Gen:
        yield from self._get_version()
        yield from self._get_capabilities()
        return (yield from self._negotiate_algorithms())

    # ---- identity --------------------------------------------------------------------------

    def _session(self, session_id: int | None) -> Session | None:
        if session_id is None:
            return None
        s = self.sessions.get(session_id)
        if s is None or s.state != SessionState.ESTABLISHED:
            raise ValueError(f"no established session 0x{session_id:08x}")
        return s

    def get_digests(self, session_id: int | None = None) -> Operation:
        return Operation(self._get_digests(session_id))

    def _get_digests(self, session_id: int | None) -> Gen:
        sess = self._session(session_id)
        req = encode(GetDigests, {"version": self.conn.version})
        resp = yield from self._exchange(req, sess, expect=Rsp.DIGESTS)
        h = self.conn.algorithms.hash_size
        msg = self._decode(Digests, resp, hash_size=h, multi_key=int(self.conn.multi_key))
        resp = msg.raw
        slots = [s for s in range(8) if msg.param2 & (1 << s)]
        self.digests = {s: bytes(d) for s, d in zip(slots, msg.digests, strict=True)}
        if self.conn.version >= V13:
            self.supported_slot_mask = msg.param1
        if self.conn.multi_key:
            self.slot_key_info = {
                s: (kp, ci, usage) for s, kp, ci, usage in zip(
                    slots, msg.key_pair_ids, msg.cert_infos, msg.key_usage_masks,
                    strict=True)}
        if sess is None:
            self.transcript.b += req + resp
            if self.conn.multi_key:
                self.transcript.d = bytearray(resp)
        return dict(self.digests)

    def get_certificate(self, slot: int = 0, session_id: int | None = None,
                        portion: int | None = None) -> Operation:
        """Retrieve and validate slot `slot`'s chain.  `portion`: bytes asked for per
        GET_CERTIFICATE; by default as many as a CERTIFICATE within our DataTransferSize
        carries (1.2+), so a 22 KB ML-DSA-87 chain takes 6 exchanges at 4096 rather than
        23 at 1 KiB, and no CHUNK_GET; 0x400 before 1.2."""
        return Operation(self._get_certificate(slot, session_id, portion))

    def _get_certificate(self, slot: int, session_id: int | None,
                         portion: int | None) -> Gen:
        if portion is None:
            dts = self.conn.req_data_transfer_size
            portion = min(dts - CERTIFICATE_HEADER_SIZE, 0xFFFF) if dts else 0x400
        sess = self._session(session_id)
        chain = bytearray()
        while True:
            req = encode(GetCertificate, {"version": self.conn.version, "param1": slot,
                                          "offset": len(chain), "length": portion})
            resp = yield from self._exchange(req, sess, expect=Rsp.CERTIFICATE)
            msg = self._decode(Certificate, resp)
            resp = msg.raw
            if msg.param1 & 0x0F != slot:
                raise _fail("CERTIFICATE for another slot")
            if msg.portion_length > portion or msg.portion_length == 0:
                raise _fail("CERTIFICATE PortionLength invalid")
            chain += msg.cert_chain
            if sess is None:
                self.transcript.b += req + resp
            if msg.remainder_length == 0:
                break
            if len(chain) + msg.remainder_length > 0xFFFF:
                raise _fail("certificate chain too long")
        data = bytes(chain)
        a = self.conn.algorithms
        if slot in self.digests and crypto.digest(a.base_hash, data) != self.digests[slot]:
            raise CertificateError("certificate chain does not match its DIGESTS entry")
        self.leaf_keys[slot] = verify_chain(
            data, self.config.trust_anchors, a.base_hash, a.signer, now=self.config.now(),
            policy=self.config.cert_policy,
        )
        self.cert_chains[slot] = data
        return data

    def _leaf(self, slot: int) -> crypto.PublicKey:
        key = self.leaf_keys.get(slot)
        if key is None:
            raise ValueError(f"certificate chain of slot {slot} not retrieved/verified")
        return key

    def _verify_sig(self, slot: int, context: bytes, transcript: bytes, sig: bytes) -> None:
        a = self.conn.algorithms
        m = crypto.message_to_sign(self.conn.version, a.base_hash, context, transcript)
        if not crypto.verify(a.signer, a.base_hash, self._leaf(slot), m, sig, context):
            raise VerificationError("signature verification failed")

    def challenge(self, slot: int = 0, meas_summary: int = MEAS_SUMMARY_NONE) -> Operation:
        return Operation(self._challenge(slot, meas_summary))

    def _challenge(self, slot: int, meas_summary: int) -> Gen:
        v = self.conn.version
        nonce = self.config.random(32)
        ctx = self.config.random(8) if v >= V13 else None
        req = encode(Challenge, {"version": v, "param1": slot, "param2": meas_summary,
                                 "nonce": nonce, "requester_context": ctx})
        resp = yield from self._exchange(req, expect=Rsp.CHALLENGE_AUTH)
        a = self.conn.algorithms
        ms = a.hash_size if meas_summary else 0
        msg = self._decode(ChallengeAuth, resp, hash_size=a.hash_size, meas_summary_size=ms,
                           sig_size=a.sig_size)
        resp = msg.raw
        if msg.param1 & 0x0F != slot:
            raise _fail("CHALLENGE_AUTH for another slot")
        chain = self.cert_chains.get(slot)
        if chain is None or crypto.digest(a.base_hash, chain) != msg.cert_chain_hash:
            raise VerificationError("CertChainHash does not match the retrieved chain")
        if v >= V13 and msg.requester_context != ctx:
            raise _fail("RequesterContext not echoed")
        unsigned = resp[: len(resp) - a.sig_size]
        self.transcript.c = bytearray(req + unsigned)
        m1m2 = self.transcript.m1m2()
        self.transcript.reset_auth()
        self._verify_sig(slot, crypto.CTX_CHALLENGE_AUTH, m1m2, msg.signature)
        self.authenticated = True
        return bytes(msg.meas_summary_hash)

    # ---- measurements ----------------------------------------------------------------------

    def get_measurements(self, index: int = 0xFF, *, signed: bool = True, slot: int = 0,
                         session_id: int | None = None, raw: bool = False) -> Operation:
        return Operation(self._get_measurements(index, signed, slot, session_id, raw))

    def _get_measurements(self, index: int, signed: bool, slot: int,
                          session_id: int | None, raw: bool) -> Gen:
        sess = self._session(session_id)
        v = self.conn.version
        attrs = (MEAS_ATTR_SIGNATURE if signed else 0) | (0x2 if raw and v >= V13 else 0)
        nonce = self.config.random(32) if signed else None
        ctx = self.config.random(8) if v >= V13 else None
        req = encode(GetMeasurements, {
            "version": v, "param1": attrs, "param2": index, "nonce": nonce,
            "slot_id": slot if signed else None, "requester_context": ctx,
        })
        m = sess.transcript.m if sess is not None else self.transcript.m
        resp = yield from self._exchange(req, sess, expect=Rsp.MEASUREMENTS)
        a = self.conn.algorithms
        sig_size = a.sig_size if signed else 0
        msg = self._decode(Measurements, resp, sig_size=sig_size)
        resp = msg.raw
        if v >= V13 and msg.requester_context != ctx:
            raise _fail("RequesterContext not echoed")
        if signed and msg.param2 & 0x0F != slot:
            raise _fail("MEASUREMENTS signed with another slot")
        if index == 0 and (msg.number_of_blocks != 0 or msg.record):
            raise _fail("count request answered with blocks")
        try:
            blocks = parse_record(bytes(msg.record), msg.number_of_blocks)
        except (ValueError, MessageFormatError) as exc:
            raise _fail(f"bad measurement record: {exc}") from exc
        if index not in (0, 0xFF) and [b.index for b in blocks] != [index]:
            raise _fail("MEASUREMENTS for another index")
        for b in blocks:
            if not b.is_raw and len(b.value) != a.meas_hash_size:
                raise _fail("measurement digest size does not match MeasurementHashAlgo")
        m += req + resp[: len(resp) - sig_size]
        if signed:
            l1l2 = self.transcript.l1l2(v, m)
            m.clear()
            self._verify_sig(slot, crypto.CTX_MEASUREMENTS, l1l2, msg.signature)
        self.last_signed_measurements = signed
        if index == 0:
            self.measurement_count = msg.param1
            return msg.param1
        for b in blocks:
            self.measurements[b.index] = b
        return blocks

    # ---- provisioning and device information (spdm.req_provisioning) ---------------------

    def get_key_pair_info(self, key_pair_id: int, session_id: int | None = None) -> Operation:
        """GET_KEY_PAIR_INFO (1.3): a `KeyPairInfoResult`."""
        return Operation(req_prov.get_key_pair_info(self, key_pair_id, session_id))

    def get_csr(self, requester_info: bytes = b"", *, opaque: bytes = b"",
                key_pair_id: int = 0, cert_model: int = 0,
                session_id: int | None = None) -> Operation:
        """GET_CSR (1.2): the DER CSR.  `key_pair_id` / `cert_model` on a 1.3 multi-key
        connection (0 otherwise)."""
        return Operation(req_prov.get_csr(self, requester_info, opaque, key_pair_id,
                                          cert_model, session_id))

    def set_certificate(self, slot: int, certs_der: Sequence[bytes] = (), *,
                        key_pair_id: int = 0, cert_model: int = 0, erase: bool = False,
                        session_id: int | None = None) -> Operation:
        """SET_CERTIFICATE (1.2): install `certs_der` (root first) in `slot`, or (1.3)
        erase it."""
        return Operation(req_prov.set_certificate(self, slot, certs_der, key_pair_id,
                                                  cert_model, erase, session_id))

    def get_mel(self, session_id: int | None = None, portion: int | None = None) -> Operation:
        """GET_MEASUREMENT_EXTENSION_LOG (1.3): the whole MEL."""
        return Operation(req_prov.get_mel(self, session_id, portion))

    def get_endpoint_info(self, *, signed: bool = False, slot: int = 0,
                          session_id: int | None = None) -> Operation:
        """GET_ENDPOINT_INFO (1.3): the DeviceClassIdentifier EPInfo, signature checked
        when `signed`."""
        return Operation(req_prov.get_endpoint_info(self, signed, slot, session_id))

    # ---- sessions ----------------------------------------------------------------------------

    def _new_req_session_id(self) -> int:
        rid = self._next_req_session
        self._next_req_session = (self._next_req_session % 0xFFFE) + 1
        return rid

    def _make_session(self, session_id: int, cert_hash: bytes, psk: bool,
                      secured_version: int) -> Session:
        a = self.conn.algorithms
        # TH of a KEY_EXCHANGE session includes D on a multi-key connection.
        prefix = (bytes(self.transcript.vca) if psk
                  else self.transcript.th_prefix(self.conn.multi_key))
        return Session(
            session_id=session_id, version=self.conn.version, algorithms=a,
            transcript=SessionTranscript(prefix, cert_hash),
            key_schedule=KeySchedule(self.conn.version, a.base_hash, a.aead),
            psk=psk, mac_only=self.conn.mac_only,
            handshake_in_clear=self.conn.handshake_in_clear and not psk,
            secured_version=secured_version, transport=self.config.transport,
            random=self.config.random,
        )

    def _check_version_selection(self, opaque_data: bytes) -> int:
        try:
            sel = opaque.parse_version_selection(opaque_data, fmt1=self.conn.opaque_fmt1)
        except opaque.OpaqueError as exc:
            raise _fail(f"bad opaque data: {exc}") from exc
        if sel not in self.config.secured_versions:
            raise _fail("responder selected a secured-message version we did not offer")
        return sel

    def key_exchange(self, slot: int = 0, meas_summary: int = MEAS_SUMMARY_NONE,
                     session_policy: int = 0) -> Operation:
        """KEY_EXCHANGE + FINISH; result is the session id."""
        return Operation(self._key_exchange(slot, meas_summary, session_policy))

    def _key_exchange(self, slot: int, meas_summary: int, policy: int) -> Gen:
        a = self.conn.algorithms
        v = self.conn.version
        req_sid = self._new_req_session_id()
        # DSP0274 1.4: with a KEM the requester sends an ephemeral encapsulation key and
        # decapsulates the responder's ciphertext; the secret feeds the same key schedule.
        share: crypto.DheKey | crypto.KemKey = (
            crypto.KemKey(a.kem, self.config.random) if a.kem
            else crypto.DheKey(a.dhe, self.config.random))
        req = encode(KeyExchange, {
            "version": v, "param1": meas_summary, "param2": slot,
            "req_session_id": req_sid, "session_policy": policy if v >= V12 else 0,
            "random": self.config.random(32), "exchange_data": share.exchange_data(),
            "opaque": opaque.build_supported_versions(tuple(self.config.secured_versions),
                                                      fmt1=self.conn.opaque_fmt1),
        }, exchange_size=a.req_exchange_size)
        resp = yield from self._exchange(req, expect=Rsp.KEY_EXCHANGE_RSP)
        hs_clear = self.conn.handshake_in_clear
        verify_size = 0 if hs_clear else a.hash_size
        ms = a.hash_size if meas_summary else 0
        msg = self._decode(KeyExchangeRsp, resp, exchange_size=a.rsp_exchange_size,
                           meas_summary_size=ms, sig_size=a.sig_size, verify_size=verify_size)
        resp = msg.raw
        secured_version = self._check_version_selection(bytes(msg.opaque))
        sid = (msg.rsp_session_id << 16) | req_sid
        if sid in self.sessions:
            raise _fail("responder reused a session id")
        chain = self.cert_chains.get(slot)
        if chain is None:
            raise ValueError(f"certificate chain of slot {slot} not retrieved")
        sess = self._make_session(sid, crypto.digest(a.base_hash, chain), False,
                                  secured_version)
        sess.heartbeat_period = msg.param1
        mut = msg.mut_auth_requested
        if mut:
            if not self.conn.both(ReqCap.MUT_AUTH, RspCap.MUT_AUTH):
                raise _fail("mutual authentication requested without MUT_AUTH_CAP")
            if mut not in (MUT_AUTH_REQUESTED, MUT_AUTH_WITH_ENCAP_REQUEST):
                raise _fail(f"unsupported MutAuthRequested 0x{mut:02x}")
            if mut == MUT_AUTH_WITH_ENCAP_REQUEST and not self.conn.both(ReqCap.ENCAP,
                                                                        RspCap.ENCAP):
                raise _fail("encapsulated flow requested without ENCAP_CAP")
            if self.config.identity is None:
                raise _fail("mutual authentication requested but no requester identity")
            sess.mut_auth = mut
            sess.req_slot_id = msg.req_slot_id_param & 0x0F
            req_chain = self.config.identity.spdm_chain(a.base_hash)
            sess.transcript.req_cert_chain_hash = crypto.digest(a.base_hash, req_chain)
        sig_end = len(resp) - verify_size
        sig_start = sig_end - a.sig_size
        sess.transcript.k += req + resp[:sig_start]
        self._verify_sig(slot, crypto.CTX_KEY_EXCHANGE_RSP, sess.transcript.th_k(),
                         msg.signature)
        sess.transcript.k += msg.signature
        try:
            shared = share.shared_secret(bytes(msg.exchange_data))
        except crypto.CryptoError as exc:
            raise _fail(str(exc)) from exc
        th1 = crypto.digest(a.base_hash, sess.transcript.th_k())
        self._reveal("DHE Secret", shared)
        sess.install_handshake_keys(shared, th1)
        if not hs_clear:
            expected = sess.hmac_th(sess.rsp_finished_key, sess.transcript.th_k())
            if not crypto.hmac_compare(expected, msg.verify_data):
                raise VerificationError("ResponderVerifyData mismatch")
            sess.transcript.k += msg.verify_data
        self.sessions[sid] = sess
        try:
            if sess.mut_auth == MUT_AUTH_WITH_ENCAP_REQUEST:
                sess.req_slot_id = yield from self._encap_flow(sess)
            yield from self._finish(sess)
        except Exception:
            self.sessions.pop(sid, None)
            raise
        return sid

    def _encap_flow(self, sess: Session) -> Gen:
        """Answer the responder's encapsulated GET_DIGESTS/GET_CERTIFICATE requests during
        the handshake (DSP0274 1.2 GET_ENCAPSULATED_REQUEST clause); returns the slot to sign
        FINISH with."""
        v = self.conn.version
        resp = yield from self._exchange(encode(GetEncapsulatedRequest, {"version": v}), sess,
                                         expect=Rsp.ENCAPSULATED_REQUEST)
        er = self._decode(EncapsulatedRequest, resp)
        resp = er.raw
        request_id, inner = er.param1, bytes(er.request)
        for _ in range(256):
            answer = self._answer_encapsulated(inner)
            deliver = encode(DeliverEncapsulatedResponse, {"version": v, "param1": request_id,
                                                           "response": answer})
            resp = yield from self._exchange(deliver, sess, expect=Rsp.ENCAPSULATED_RESPONSE_ACK)
            ack = self._decode(EncapsulatedResponseAck, resp)
            resp = ack.raw
            if v >= V12 and ack.ack_request_id != request_id:
                raise _fail("ENCAPSULATED_RESPONSE_ACK for another request")
            if ack.param2 == 0:
                return 0
            if ack.param2 == 2:
                if len(ack.request) != 1 or ack.request[0] >= 8:
                    raise _fail("bad ReqSlotNumber")
                return int(ack.request[0])
            if ack.param2 != 1:
                raise _fail("unknown encapsulated PayloadType")
            request_id, inner = ack.param1, bytes(ack.request)
        raise _fail("encapsulated flow does not terminate")

    def _answer_encapsulated(self, inner: bytes) -> bytes:
        """Act as a responder for the requests a responder may encapsulate."""
        v = self.conn.version
        ident = self.config.identity
        assert ident is not None
        a = self.conn.algorithms
        chain = ident.spdm_chain(a.base_hash)

        def error(code: int, data: int = 0) -> bytes:
            return encode(Error, {"version": v, "param1": code, "param2": data})

        try:
            hdr = header(inner)
            if hdr.version != v:
                return error(ErrorCode.VERSION_MISMATCH)
            if hdr.code == Req.GET_DIGESTS:
                decode(GetDigests, inner)
                return encode(Digests, {"version": v, "param1": 1 if v >= V13 else 0,
                                        "param2": 1,
                                        "digests": [crypto.digest(a.base_hash, chain)]},
                              hash_size=a.hash_size)
            if hdr.code == Req.GET_CERTIFICATE:
                gc = decode(GetCertificate, inner)
                if gc.param1 & 0x0F != 0 or gc.offset >= len(chain):
                    return error(ErrorCode.INVALID_REQUEST)
                part = chain[gc.offset : gc.offset + gc.length]
                return encode(Certificate, {"version": v, "param1": 0, "cert_chain": part,
                                            "remainder_length": len(chain) - gc.offset
                                            - len(part)})
        except MessageFormatError:
            return error(ErrorCode.INVALID_REQUEST)
        return error(ErrorCode.UNSUPPORTED_REQUEST, inner[1] if len(inner) > 1 else 0)

    def _finish(self, sess: Session) -> Gen:
        a = self.conn.algorithms
        v = self.conn.version
        sig = b""
        param1 = FINISH_ATTR_SIGNATURE if sess.mut_auth else 0
        # The header (with 1.4's empty OpaqueData) is signed and MACed before the message
        # around it exists (DSP0274 1.4 §10.15).
        hdr = encode(Finish, {"version": v, "param1": param1,
                              "param2": sess.req_slot_id if sess.mut_auth else 0,
                              "opaque": b"", "signature": b"", "verify_data": b""})
        if sess.mut_auth:
            assert self.config.identity is not None
            m = crypto.message_to_sign(v, a.base_hash, crypto.CTX_FINISH,
                                       sess.transcript.th() + hdr)
            sig = crypto.sign(a.req_signer, a.base_hash, self.config.identity.key, m,
                              crypto.CTX_FINISH)
        verify = sess.hmac_th(sess.req_finished_key, sess.transcript.th() + hdr + sig)
        req = hdr + sig + verify
        resp = yield from self._exchange(req, sess, expect=Rsp.FINISH_RSP,
                                         clear=sess.handshake_in_clear)
        sess.transcript.f += req
        vsize = a.hash_size if sess.handshake_in_clear else 0
        msg = self._decode(FinishRsp, resp, verify_size=vsize)
        resp = msg.raw
        if sess.handshake_in_clear:
            expected = sess.hmac_th(sess.rsp_finished_key,
                                    sess.transcript.th() + resp[: len(resp) - vsize])
            if not crypto.hmac_compare(expected, msg.verify_data):
                raise VerificationError("FINISH_RSP ResponderVerifyData mismatch")
        sess.transcript.f += resp
        sess.install_data_keys(crypto.digest(a.base_hash, sess.transcript.th()))

    def psk_exchange(self, hint: bytes, meas_summary: int = MEAS_SUMMARY_NONE) -> Operation:
        """PSK_EXCHANGE (+ PSK_FINISH when the responder supports context)."""
        return Operation(self._psk_exchange(hint, meas_summary))

    def _psk_exchange(self, hint: bytes, meas_summary: int) -> Gen:
        a = self.conn.algorithms
        v = self.conn.version
        psk = self.config.psk.get(hint)
        if psk is None:
            raise ValueError("unknown PSK hint")
        req_sid = self._new_req_session_id()
        req = encode(PskExchange, {
            "version": v, "param1": meas_summary, "req_session_id": req_sid,
            "psk_hint": hint, "context": self.config.random(a.hash_size),
            "opaque": opaque.build_supported_versions(tuple(self.config.secured_versions),
                                                      fmt1=self.conn.opaque_fmt1),
        })
        resp = yield from self._exchange(req, expect=Rsp.PSK_EXCHANGE_RSP)
        ms = a.hash_size if meas_summary else 0
        msg = self._decode(PskExchangeRsp, resp, meas_summary_size=ms, hash_size=a.hash_size)
        resp = msg.raw
        secured_version = self._check_version_selection(bytes(msg.opaque))
        sid = (msg.rsp_session_id << 16) | req_sid
        sess = self._make_session(sid, b"", True, secured_version)
        sess.heartbeat_period = msg.param1
        sess.transcript.k += req + resp[: len(resp) - a.hash_size]
        th1 = crypto.digest(a.base_hash, sess.transcript.th_k())
        self._reveal("PSK", psk)
        sess.install_handshake_keys(psk, th1)
        expected = sess.hmac_th(sess.rsp_finished_key, sess.transcript.th_k())
        if not crypto.hmac_compare(expected, msg.verify_data):
            raise VerificationError("PSK_EXCHANGE_RSP ResponderVerifyData mismatch")
        sess.transcript.k += msg.verify_data
        self.sessions[sid] = sess
        if not self.conn.rsp_caps & RspCap.PSK_WITH_CONTEXT:
            sess.install_data_keys(crypto.digest(a.base_hash, sess.transcript.th()))
            return sid
        hdr = encode(PskFinish, {"version": v, "opaque": b"", "verify_data": b""})
        verify = sess.hmac_th(sess.req_finished_key, sess.transcript.th() + hdr)
        fin = hdr + verify
        resp2 = yield from self._exchange(fin, sess, expect=Rsp.PSK_FINISH_RSP)
        resp2 = self._decode(PskFinishRsp, resp2).raw
        sess.transcript.f += fin + resp2
        sess.install_data_keys(crypto.digest(a.base_hash, sess.transcript.th()))
        return sid

    def heartbeat(self, session_id: int) -> Operation:
        return Operation(self._simple(session_id, Heartbeat, HeartbeatAck,
                                      Rsp.HEARTBEAT_ACK, 0, 0))

    def _simple(self, session_id: int, fmt: Any, rfmt: Any, expect: int, p1: int,
                p2: int) -> Gen:
        sess = self._session(session_id)
        req = encode(fmt, {"version": self.conn.version, "param1": p1, "param2": p2})
        resp = yield from self._exchange(req, sess, expect=expect)
        return self._decode(rfmt, resp)

    def key_update(self, session_id: int, operation: int = KEY_UPDATE_UPDATE_ALL_KEYS,
                   verify: bool = True) -> Operation:
        """KEY_UPDATE (UpdateKey / UpdateAllKeys), then VerifyNewKey under the new keys."""
        return Operation(self._key_update(session_id, operation, verify))

    def _key_update(self, session_id: int, op: int, verify: bool) -> Gen:
        sess = self._session(session_id)
        assert sess is not None and sess.rsp_keys is not None and sess.rsp_prot is not None
        if op not in (KEY_UPDATE_UPDATE_KEY, KEY_UPDATE_UPDATE_ALL_KEYS,
                      KEY_UPDATE_VERIFY_NEW_KEY):
            raise ValueError("bad KEY_UPDATE operation")
        tag = self.config.random(1)[0]
        req = encode(KeyUpdate, {"version": self.conn.version, "param1": op, "param2": tag})
        self._observe("request", sess, req)
        record = sess.seal(req, from_requester=True)
        saved = (sess.rsp_keys, sess.rsp_prot.key, sess.rsp_prot.iv, sess.rsp_prot.seq)
        if op == KEY_UPDATE_UPDATE_ALL_KEYS:
            # The ACK to UpdateAllKeys arrives under the new response key (libspdm
            # libspdm_try_key_update creates the responder key before sending).
            sess.update_rsp_keys()
        raw = yield Outgoing(record, True, session_id)
        try:
            resp = sess.open(raw, from_requester=False)
            self._observe("response", sess, resp)
            hdr = self._header(resp)
            if hdr.code == Rsp.ERROR:
                err = decode(Error, resp)
                raise ErrorResponse(err.param1, err.param2, bytes(err.extended))
            ack = self._decode(KeyUpdateAck, resp)
            resp = ack.raw
            if ack.param1 != op or ack.param2 != tag or ack.version != self.conn.version:
                raise _fail("KEY_UPDATE_ACK does not echo operation/tag")
        except (RecordError, ForeignPayload, PeerError) as exc:
            # Restore the old response key, as libspdm does when the ACK fails.
            sess.rsp_keys = saved[0]
            sess.rsp_prot.key, sess.rsp_prot.iv, sess.rsp_prot.seq = saved[1:]
            if isinstance(exc, RecordError):
                raise RecordAuthenticationError(
                    f"cannot authenticate KEY_UPDATE_ACK: {exc}") from exc
            if isinstance(exc, ForeignPayload):
                raise _fail(f"KEY_UPDATE_ACK record: {exc}") from exc
            raise
        if op in (KEY_UPDATE_UPDATE_KEY, KEY_UPDATE_UPDATE_ALL_KEYS):
            sess.update_req_keys()
            if verify:
                tag = self.config.random(1)[0]
                ack = yield from self._simple(session_id, KeyUpdate, KeyUpdateAck,
                                              Rsp.KEY_UPDATE_ACK, KEY_UPDATE_VERIFY_NEW_KEY,
                                              tag)
                if ack.param1 != KEY_UPDATE_VERIFY_NEW_KEY or ack.param2 != tag:
                    raise _fail("KEY_UPDATE_ACK does not echo operation/tag")
        return True

    def end_session(self, session_id: int, clear_negotiated_state: bool = False) -> Operation:
        """END_SESSION; `clear_negotiated_state` sets Param1 bit 0, the Negotiated State
        Clearing Indicator (a CACHE_CAP responder then forgets the VCA it kept)."""
        return Operation(self._end_session(session_id, clear_negotiated_state))

    def _end_session(self, session_id: int, clear: bool) -> Gen:
        yield from self._simple(session_id, EndSession, EndSessionAck, Rsp.END_SESSION_ACK,
                                1 if clear else 0, 0)
        sess = self.sessions.pop(session_id)
        sess.state = SessionState.ENDED
        return True

    def vendor_defined(self, standard_id: int, vendor_id: bytes, payload: bytes,
                       session_id: int | None = None) -> Operation:
        """VENDOR_DEFINED_REQUEST; result is the response payload."""
        return Operation(self._vendor_defined(standard_id, vendor_id, payload, session_id))

    def _vendor_defined(self, std: int, vid: bytes, payload: bytes,
                        session_id: int | None) -> Gen:
        sess = self._session(session_id)
        req = encode(VendorDefinedRequest, {"version": self.conn.version, "standard_id": std,
                                            "vendor_id": vid, "payload": payload})
        resp = yield from self._exchange(req, sess, expect=Rsp.VENDOR_DEFINED_RESPONSE)
        msg = self._decode(VendorDefinedResponse, resp)
        resp = msg.raw
        if msg.standard_id != std or bytes(msg.vendor_id) != vid:
            raise _fail("VENDOR_DEFINED_RESPONSE for another vendor")
        return bytes(msg.payload)

    def raw(self, message: bytes, session_id: int | None = None) -> Operation:
        """Send an arbitrary message and return the raw (decrypted) response; for tests and
        fault injection. No validation, no transcript update."""
        return Operation(self._raw(message, session_id))

    def _raw(self, message: bytes, session_id: int | None) -> Gen:
        sess = self.sessions.get(session_id) if session_id is not None else None
        return (yield from self._roundtrip(message, sess, False))

    # ---- evidence ------------------------------------------------------------------------------

    def evidence(self) -> dict[str, Any]:
        a = self.conn.algorithms
        return {
            "version": self.conn.version,
            "algorithms": a,
            "responder_capabilities": self.conn.rsp_caps,
            "cert_chains": dict(self.cert_chains),
            "measurements": dict(self.measurements),
            "sessions": sorted(self.sessions),
        }

