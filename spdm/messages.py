"""SPDM message wire formats as `construct` declarations (DSP0274 1.2-1.4 'SPDM messages' clause).

Each message is declared once and used for both parsing and building. Fields whose size
depends on negotiated state read it from the construct context, passed as keyword arguments
to `decode` / `encode`:

    hash_size          H, size of the negotiated BaseHashAlgo digest
    sig_size           S, signature size of the signer of this message (0 when unsigned)
    exchange_size      ExchangeData size of this KEY_EXCHANGE(_RSP): the DHE share, or with a
                       1.4 KEM the encapsulation key (request) / ciphertext (response)
    meas_summary_size  H, or 0 when MeasurementSummaryHashType was 0
    verify_size        H, or 0 when the message carries no VerifyData (handshake in the clear)
    multi_key          1 on an SPDM 1.3 multi-key connection (DIGESTS carries key info)
"""

from __future__ import annotations

import io
from typing import Any

from construct import (
    ConstructError,
    Default,
    ExprMixin,
    If,
    IfThenElse,
    Rebuild,
    Struct,
    len_,
    this,
)

from spdm.codes import Req, Rsp

# The field classes come from spdm.compiled: construct's own, plus generated code that
# keeps the interpreter's checks, so decode()/encode() can run compiled declarations.
from spdm.compiled import (
    Array,
    Bytes,
    Const,
    GreedyBytes,
    Int8ul,
    Int16ul,
    Int24ul,
    Int32ul,
    Interpreted,
    compiled,
)
from spdm.compiled import build as compiled_build
from spdm.compiled import parse_stream as compiled_parse
from spdm.errors import MessageFormatError as MessageFormatError  # re-exported: raised here

MEASUREMENT_BLOCK_HEADER_SIZE = 4
HEADER_SIZE = 4


def _hdr(code: int) -> list[Any]:
    return [
        "version" / Int8ul,
        "code" / Const(code, Int8ul),
        "param1" / Default(Int8ul, 0),
        "param2" / Default(Int8ul, 0),
    ]


def _v(minimum: int) -> Any:
    # A `this` expression rather than a lambda: compile() can inline it.
    return this.version >= minimum


def Opt(cond: Any, subcon: Any) -> Any:  # noqa: N802 - reads like a construct class
    """`If` whose field may be omitted when building (the condition decides presence)."""
    field = If(cond, subcon)
    field.flagbuildnone = True
    return field if isinstance(cond, ExprMixin) else Interpreted(field)


Header = Struct("version" / Int8ul, "code" / Int8ul, "param1" / Int8ul, "param2" / Int8ul)


def message_header(version: int, code: int, param1: int = 0, param2: int = 0) -> bytes:
    """The 4-byte SPDM header alone (what FINISH's signature and VerifyData cover first)."""
    out: bytes = Header.build({"version": version, "code": code, "param1": param1,
                               "param2": param2})
    return out


# --- VCA --------------------------------------------------------------------------------

GetVersion = Struct(*_hdr(Req.GET_VERSION))

Version = Struct(
    *_hdr(Rsp.VERSION),
    "reserved" / Default(Int8ul, 0),
    "count" / Rebuild(Int8ul, len_(this.entries)),
    "entries" / Array(this.count, Int16ul),
)

# DSP0274 1.2 Table 'GET_CAPABILITIES': 4 bytes (1.0), 12 (1.1), 20 (1.2+).
GetCapabilities = Struct(
    *_hdr(Req.GET_CAPABILITIES),
    "reserved1" / Opt(_v(0x11), Default(Int8ul, 0)),
    "ct_exponent" / Opt(_v(0x11), Default(Int8ul, 0)),
    "reserved2" / Opt(_v(0x11), Default(Int16ul, 0)),
    "flags" / Opt(_v(0x11), Default(Int32ul, 0)),
    "data_transfer_size" / Opt(_v(0x12), Int32ul),
    "max_spdm_msg_size" / Opt(_v(0x12), Int32ul),
)

Capabilities = Struct(
    *_hdr(Rsp.CAPABILITIES),
    "reserved1" / Default(Int8ul, 0),
    "ct_exponent" / Int8ul,
    "reserved2" / Default(Int16ul, 0),
    "flags" / Int32ul,
    "data_transfer_size" / Opt(_v(0x12), Int32ul),
    "max_spdm_msg_size" / Opt(_v(0x12), Int32ul),
)

# AlgStruct (DSP0274 Table 'Algorithm request structure'): AlgCount bits 7:4 = 2 (fixed
# algorithm bytes), bits 3:0 = number of external algorithms.
AlgStruct = Struct(
    "alg_type" / Int8ul,
    "alg_count" / Default(Int8ul, 0x20),
    "supported" / Int16ul,
    "external" / Default(Array(this.alg_count & 0x0F, Int32ul), []),
)


def _alg_structs_len(structs: list[Any]) -> int:
    return sum(4 + 4 * (s.get("alg_count", 0x20) & 0x0F) for s in structs)


NegotiateAlgorithms = Struct(
    *_hdr(Req.NEGOTIATE_ALGORITHMS),  # param1 = number of AlgStructs
    "length"
    / Interpreted(Rebuild(
        Int16ul,
        lambda c: 32
        + 4 * (len(c.get("ext_asym") or []) + len(c.get("ext_hash") or []))
        + _alg_structs_len(c.alg_structs),
    )),
    "meas_spec" / Int8ul,
    "other_params" / Default(Int8ul, 0),
    "base_asym" / Int32ul,
    "base_hash" / Int32ul,
    # DSP0274 1.4 §10.4 PqcAsymAlgo; reserved (zero, ignored) before 1.4.
    "pqc_asym" / Default(Int32ul, 0),
    "reserved1" / Default(Bytes(8), bytes(8)),
    "ext_asym_count" / Interpreted(Rebuild(Int8ul, lambda c: len(c.get("ext_asym") or []))),
    "ext_hash_count" / Interpreted(Rebuild(Int8ul, lambda c: len(c.get("ext_hash") or []))),
    "reserved2" / Default(Int8ul, 0),
    "mel_spec" / Default(Int8ul, 0),
    "ext_asym" / Default(Array(this.ext_asym_count, Int32ul), []),
    "ext_hash" / Default(Array(this.ext_hash_count, Int32ul), []),
    "alg_structs" / Array(this.param1, AlgStruct),
)

Algorithms = Struct(
    *_hdr(Rsp.ALGORITHMS),
    "length"
    / Interpreted(Rebuild(
        Int16ul,
        lambda c: 36
        + 4 * (len(c.get("ext_asym_sel") or []) + len(c.get("ext_hash_sel") or []))
        + _alg_structs_len(c.alg_structs),
    )),
    "meas_spec_sel" / Int8ul,
    "other_params_sel" / Default(Int8ul, 0),
    "meas_hash_algo" / Int32ul,
    "base_asym_sel" / Int32ul,
    "base_hash_sel" / Int32ul,
    # DSP0274 1.4 §10.4 PqcAsymSel; reserved before 1.4.
    "pqc_asym_sel" / Default(Int32ul, 0),
    "reserved1" / Default(Bytes(7), bytes(7)),
    "mel_spec_sel" / Default(Int8ul, 0),
    "ext_asym_sel_count"
    / Interpreted(Rebuild(Int8ul, lambda c: len(c.get("ext_asym_sel") or []))),
    "ext_hash_sel_count"
    / Interpreted(Rebuild(Int8ul, lambda c: len(c.get("ext_hash_sel") or []))),
    "reserved2" / Default(Int16ul, 0),
    "ext_asym_sel" / Default(Array(this.ext_asym_sel_count, Int32ul), []),
    "ext_hash_sel" / Default(Array(this.ext_hash_sel_count, Int32ul), []),
    "alg_structs" / Array(this.param1, AlgStruct),
)

# --- Identity -----------------------------------------------------------------------------

GetDigests = Struct(*_hdr(Req.GET_DIGESTS))

# param2 = ProvisionedSlotMask (1.3; SlotMask before); one digest per set bit.
def _provisioned(c: Any) -> int:
    return bin(c.param2).count("1")


# With a 1.3 multi-key connection DIGESTS also carries KeyPairID, CertificateInfo and
# KeyUsageMask per provisioned slot (DSP0274 1.3 DIGESTS).
Digests = Struct(
    *_hdr(Rsp.DIGESTS),
    "digests" / Interpreted(Array(_provisioned, Bytes(this._params.hash_size))),
    "key_pair_ids" / Opt(this._params.multi_key, Interpreted(Array(_provisioned, Int8ul))),
    "cert_infos" / Opt(this._params.multi_key, Interpreted(Array(_provisioned, Int8ul))),
    "key_usage_masks"
    / Opt(this._params.multi_key, Interpreted(Array(_provisioned, Int16ul))),
)

GetCertificate = Struct(
    *_hdr(Req.GET_CERTIFICATE),  # param1 bits 3:0 = SlotID
    "offset" / Int16ul,
    "length" / Int16ul,
)

Certificate = Struct(
    *_hdr(Rsp.CERTIFICATE),
    "portion_length" / Rebuild(Int16ul, len_(this.cert_chain)),
    "remainder_length" / Int16ul,
    "cert_chain" / Bytes(this.portion_length),
)

# The fixed part of CERTIFICATE before CertChain (header, PortionLength, RemainderLength).
CERTIFICATE_HEADER_SIZE = 8

Challenge = Struct(
    *_hdr(Req.CHALLENGE),  # param1 = SlotID, param2 = MeasurementSummaryHashType
    "nonce" / Bytes(32),
    "requester_context" / Opt(_v(0x13), Bytes(8)),
)

ChallengeAuth = Struct(
    *_hdr(Rsp.CHALLENGE_AUTH),  # param1 bits 3:0 SlotID, param2 SlotMask
    "cert_chain_hash" / Bytes(this._params.hash_size),
    "nonce" / Bytes(32),
    "meas_summary_hash" / Bytes(this._params.meas_summary_size),
    "opaque_length" / Rebuild(Int16ul, len_(this.opaque)),
    "opaque" / Bytes(this.opaque_length),
    "requester_context" / Opt(_v(0x13), Bytes(8)),
    "signature" / Bytes(this._params.sig_size),
)

# --- Measurements ---------------------------------------------------------------------------

MEAS_ATTR_SIGNATURE = 0x01
MEAS_ATTR_RAW_BIT_STREAM = 0x02  # 1.3

GetMeasurements = Struct(
    *_hdr(Req.GET_MEASUREMENTS),  # param1 attributes, param2 operation (index)
    "nonce" / Opt((this.param1 & MEAS_ATTR_SIGNATURE) != 0, Bytes(32)),
    "slot_id" / Opt(((this.param1 & MEAS_ATTR_SIGNATURE) != 0) & (this.version >= 0x11), Int8ul),
    "requester_context" / Opt(_v(0x13), Bytes(8)),
)

Measurements = Struct(
    *_hdr(Rsp.MEASUREMENTS),
    "number_of_blocks" / Int8ul,
    "record_length" / Rebuild(Int24ul, len_(this.record)),
    "record" / Bytes(this.record_length),
    # Nonce has no condition in any version's "Successful MEASUREMENTS response" table
    # (DSP0274 1.0 through 1.3): a 1.0 response without a signature carries it too.
    "nonce" / Bytes(32),
    "opaque_length" / Rebuild(Int16ul, len_(this.opaque)),
    "opaque" / Bytes(this.opaque_length),
    "requester_context" / Opt(_v(0x13), Bytes(8)),
    "signature" / Bytes(this._params.sig_size),
)

MeasurementBlock = Struct(
    "index" / Int8ul,
    "meas_spec" / Default(Int8ul, 0x01),
    "size" / Rebuild(Int16ul, len_(this.measurement)),
    "measurement" / Bytes(this.size),
)

# DMTF measurement specification (DSP0274 Table 'DMTF measurement specification format').
DmtfMeasurement = Struct(
    "value_type" / Int8ul,
    "value_size" / Rebuild(Int16ul, len_(this.value)),
    "value" / Bytes(this.value_size),
)

# --- Sessions ---------------------------------------------------------------------------

KeyExchange = Struct(
    *_hdr(Req.KEY_EXCHANGE),  # param1 MeasurementSummaryHashType, param2 SlotID
    "req_session_id" / Int16ul,
    "session_policy" / Default(Int8ul, 0),
    "reserved" / Default(Int8ul, 0),
    "random" / Bytes(32),
    "exchange_data" / Bytes(this._params.exchange_size),
    "opaque_length" / Rebuild(Int16ul, len_(this.opaque)),
    "opaque" / Bytes(this.opaque_length),
)

KeyExchangeRsp = Struct(
    *_hdr(Rsp.KEY_EXCHANGE_RSP),  # param1 HeartbeatPeriod
    "rsp_session_id" / Int16ul,
    "mut_auth_requested" / Default(Int8ul, 0),
    "req_slot_id_param" / Default(Int8ul, 0),
    "random" / Bytes(32),
    "exchange_data" / Bytes(this._params.exchange_size),
    "meas_summary_hash" / Bytes(this._params.meas_summary_size),
    "opaque_length" / Rebuild(Int16ul, len_(this.opaque)),
    "opaque" / Bytes(this.opaque_length),
    "signature" / Bytes(this._params.sig_size),
    "verify_data" / Bytes(this._params.verify_size),
)

FINISH_ATTR_SIGNATURE = 0x01

# DSP0274 1.4 §10.15/§10.16: FINISH and FINISH_RSP (and PSK_FINISH / PSK_FINISH_RSP) carry
# OpaqueDataLength u16 and OpaqueData after the header; the signature and the VerifyData
# cover them like the rest of the message before them.
Finish = Struct(
    *_hdr(Req.FINISH),  # param1 bit0 signature present, param2 ReqSlotID
    "opaque_length" / Opt(_v(0x14), Rebuild(Int16ul, len_(this.opaque))),
    "opaque" / Opt(_v(0x14), Bytes(this.opaque_length)),
    "signature" / Bytes(this._params.sig_size),
    "verify_data" / Bytes(this._params.hash_size),
)

FinishRsp = Struct(
    *_hdr(Rsp.FINISH_RSP),
    "opaque_length" / Opt(_v(0x14), Rebuild(Int16ul, len_(this.opaque))),
    "opaque" / Opt(_v(0x14), Bytes(this.opaque_length)),
    "verify_data" / Bytes(this._params.verify_size),
)

PskExchange = Struct(
    *_hdr(Req.PSK_EXCHANGE),  # param1 MeasurementSummaryHashType
    "req_session_id" / Int16ul,
    "psk_hint_length" / Rebuild(Int16ul, len_(this.psk_hint)),
    "context_length" / Rebuild(Int16ul, len_(this.context)),
    "opaque_length" / Rebuild(Int16ul, len_(this.opaque)),
    "psk_hint" / Bytes(this.psk_hint_length),
    "context" / Bytes(this.context_length),
    "opaque" / Bytes(this.opaque_length),
)

PskExchangeRsp = Struct(
    *_hdr(Rsp.PSK_EXCHANGE_RSP),  # param1 HeartbeatPeriod
    "rsp_session_id" / Int16ul,
    "reserved" / Default(Int16ul, 0),
    "context_length" / Rebuild(Int16ul, len_(this.context)),
    "opaque_length" / Rebuild(Int16ul, len_(this.opaque)),
    "meas_summary_hash" / Bytes(this._params.meas_summary_size),
    "context" / Bytes(this.context_length),
    "opaque" / Bytes(this.opaque_length),
    "verify_data" / Bytes(this._params.hash_size),
)

PskFinish = Struct(
    *_hdr(Req.PSK_FINISH),
    "opaque_length" / Opt(_v(0x14), Rebuild(Int16ul, len_(this.opaque))),
    "opaque" / Opt(_v(0x14), Bytes(this.opaque_length)),
    "verify_data" / Bytes(this._params.hash_size),
)
PskFinishRsp = Struct(
    *_hdr(Rsp.PSK_FINISH_RSP),
    "opaque_length" / Opt(_v(0x14), Rebuild(Int16ul, len_(this.opaque))),
    "opaque" / Opt(_v(0x14), Bytes(this.opaque_length)),
)

Heartbeat = Struct(*_hdr(Req.HEARTBEAT))
HeartbeatAck = Struct(*_hdr(Rsp.HEARTBEAT_ACK))
KeyUpdate = Struct(*_hdr(Req.KEY_UPDATE))  # param1 operation, param2 tag
KeyUpdateAck = Struct(*_hdr(Rsp.KEY_UPDATE_ACK))
EndSession = Struct(*_hdr(Req.END_SESSION))  # param1 bit 0 Negotiated State Clearing
EndSessionAck = Struct(*_hdr(Rsp.END_SESSION_ACK))

# --- Vendor defined -------------------------------------------------------------------------

VendorDefinedRequest = Struct(
    *_hdr(Req.VENDOR_DEFINED_REQUEST),
    "standard_id" / Int16ul,
    "vendor_id_len" / Rebuild(Int8ul, len_(this.vendor_id)),
    "vendor_id" / Bytes(this.vendor_id_len),
    "payload_length" / Rebuild(Int16ul, len_(this.payload)),
    "payload" / Bytes(this.payload_length),
)

VendorDefinedResponse = Struct(
    *_hdr(Rsp.VENDOR_DEFINED_RESPONSE),
    "standard_id" / Int16ul,
    "vendor_id_len" / Rebuild(Int8ul, len_(this.vendor_id)),
    "vendor_id" / Bytes(this.vendor_id_len),
    "payload_length" / Rebuild(Int16ul, len_(this.payload)),
    "payload" / Bytes(this.payload_length),
)

# --- Chunking (DSP0274 1.2 CHUNK_SEND / CHUNK_GET) ------------------------------------------------
#
# DSP0274 1.4 widens ChunkSeqNo to u32 in all four messages: in CHUNK_SEND and
# CHUNK_RESPONSE it takes the place of the u16 + reserved u16 (the offsets after it are
# unchanged); CHUNK_GET and CHUNK_SEND_ACK grow by two bytes.

CHUNK_ATTR_LAST = 0x01
CHUNK_ACK_EARLY_ERROR = 0x01


def _chunk_seq() -> Any:
    return IfThenElse(_v(0x14), Int32ul, Int16ul)


ChunkSend = Struct(
    *_hdr(Req.CHUNK_SEND),  # param1 attributes, param2 handle
    "chunk_seq_no" / _chunk_seq(),
    "reserved" / Opt(this.version < 0x14, Default(Int16ul, 0)),
    "chunk_size" / Rebuild(Int32ul, len_(this.chunk)),
    "large_message_size" / Opt(this.chunk_seq_no == 0, Int32ul),
    "chunk" / Bytes(this.chunk_size),
)

ChunkSendAck = Struct(
    *_hdr(Rsp.CHUNK_SEND_ACK),  # param1 bit0 EarlyErrorDetected, param2 handle
    "chunk_seq_no" / _chunk_seq(),
    "response" / GreedyBytes,
)

ChunkGet = Struct(*_hdr(Req.CHUNK_GET), "chunk_seq_no" / _chunk_seq())

ChunkResponse = Struct(
    *_hdr(Rsp.CHUNK_RESPONSE),
    "chunk_seq_no" / _chunk_seq(),
    "reserved" / Opt(this.version < 0x14, Default(Int16ul, 0)),
    "chunk_size" / Rebuild(Int32ul, len_(this.chunk)),
    "large_message_size" / Opt(this.chunk_seq_no == 0, Int32ul),
    "chunk" / Bytes(this.chunk_size),
)

# CHUNK_SEND and CHUNK_RESPONSE fixed parts (without LargeMessageSize, 4 more bytes in the
# first chunk), for the DataTransferSize arithmetic; the same size in every version.
CHUNK_SEND_HEADER_SIZE = 12
CHUNK_RESPONSE_HEADER_SIZE = 12


def chunk_send_ack_header_size(version: int) -> int:
    """CHUNK_SEND_ACK before the embedded response: 6 bytes, 8 from SPDM 1.4."""
    return 8 if version >= 0x14 else 6

# --- Encapsulated (mutual auth) -------------------------------------------------------------

GetEncapsulatedRequest = Struct(*_hdr(Req.GET_ENCAPSULATED_REQUEST))
EncapsulatedRequest = Struct(*_hdr(Rsp.ENCAPSULATED_REQUEST), "request" / GreedyBytes)
DeliverEncapsulatedResponse = Struct(
    *_hdr(Req.DELIVER_ENCAPSULATED_RESPONSE), "response" / GreedyBytes
)
EncapsulatedResponseAck = Struct(
    *_hdr(Rsp.ENCAPSULATED_RESPONSE_ACK),
    "ack_request_id" / Opt(_v(0x12), Default(Int8ul, 0)),
    "reserved" / Opt(_v(0x12), Default(Bytes(3), bytes(3))),
    "request" / GreedyBytes,
)

# --- Misc ----------------------------------------------------------------------------------

RespondIfReady = Struct(*_hdr(Req.RESPOND_IF_READY))  # param1 code, param2 token

Error = Struct(*_hdr(Rsp.ERROR), "extended" / Default(GreedyBytes, b""))

ResponseNotReadyData = Struct(
    "rdt_exponent" / Int8ul,
    "request_code" / Int8ul,
    "token" / Int8ul,
    "rdtm" / Int8ul,
)
LargeResponseData = Struct("handle" / Int8ul)
# ExtendedErrorData of ERROR ResponseTooLarge (DSP0274 1.2 ERROR, "ResponseTooLarge"):
# the size of the response that did not fit.
ResponseTooLargeData = Struct("response_size" / Int32ul)


# --- Provisioning and device information (DSP0274 1.2 GET_CSR / SET_CERTIFICATE, 1.3 ---
# GET_KEY_PAIR_INFO, GET_MEASUREMENT_EXTENSION_LOG, GET_ENDPOINT_INFO)

# 1.3: param1 KeyPairID, param2 RequestAttributes (bits 2:0 CertModel, 5:3 CSRTrackingTag,
# bit 7 Overwrite); both reserved in 1.2.
GetCsr = Struct(
    *_hdr(Req.GET_CSR),
    "requester_info_length" / Rebuild(Int16ul, len_(this.requester_info)),
    "opaque_length" / Rebuild(Int16ul, len_(this.opaque)),
    "requester_info" / Bytes(this.requester_info_length),
    "opaque" / Bytes(this.opaque_length),
)

Csr = Struct(
    *_hdr(Rsp.CSR),
    "csr_length" / Rebuild(Int16ul, len_(this.csr)),
    "reserved" / Default(Int16ul, 0),
    "csr" / Bytes(this.csr_length),
)

# param1: bits 3:0 SlotID, (1.3) bits 6:4 CertModel, bit 7 Erase; param2 (1.3) KeyPairID.
# The body is an SPDM certificate chain (Length, Reserved, RootHash, certificates), absent
# when erasing.
SetCertificate = Struct(*_hdr(Req.SET_CERTIFICATE), "cert_chain" / GreedyBytes)
SetCertificateRsp = Struct(*_hdr(Rsp.SET_CERTIFICATE_RSP))  # param1 bits 3:0 SlotID

GetKeyPairInfo = Struct(*_hdr(Req.GET_KEY_PAIR_INFO), "key_pair_id" / Int8ul)

KeyPairInfo = Struct(
    *_hdr(Rsp.KEY_PAIR_INFO),
    "total_key_pairs" / Int8ul,
    "key_pair_id" / Int8ul,
    "capabilities" / Int16ul,
    "key_usage_capabilities" / Int16ul,
    "current_key_usage" / Int16ul,
    "asym_algo_capabilities" / Int32ul,
    "current_asym_algo" / Int32ul,
    "public_key_info_len" / Rebuild(Int16ul, len_(this.public_key_info)),
    "assoc_cert_slot_mask" / Int8ul,
    "public_key_info" / Bytes(this.public_key_info_len),
)

# Param1 Operation (SET_KEY_PAIR_INFO_OP_*); the Desired* fields follow a Reserved byte and
# are absent for Erase.  The responder does not implement it (no SET_KEY_PAIR_INFO_CAP);
# the trace decodes it from here.
SET_KEY_PAIR_INFO_OP_CHANGE = 0
SET_KEY_PAIR_INFO_OP_ERASE = 1
SET_KEY_PAIR_INFO_OP_GENERATE = 2

SetKeyPairInfo = Struct(
    *_hdr(Req.SET_KEY_PAIR_INFO),
    "key_pair_id" / Int8ul,
    "desired" / Opt(this.param1 != SET_KEY_PAIR_INFO_OP_ERASE, Struct(
        "reserved" / Default(Int8ul, 0),
        "key_usage" / Int16ul,
        "asym_algo" / Int32ul,
        "assoc_cert_slot_mask" / Int8ul,
    )),
)
SetKeyPairInfoAck = Struct(*_hdr(Rsp.SET_KEY_PAIR_INFO_ACK))

GetMel = Struct(*_hdr(Req.GET_MEASUREMENT_EXTENSION_LOG), "offset" / Int32ul,
                "length" / Int32ul)

MeasurementExtensionLog = Struct(
    *_hdr(Rsp.MEASUREMENT_EXTENSION_LOG),
    "portion_length" / Rebuild(Int32ul, len_(this.mel)),
    "remainder_length" / Int32ul,
    "mel" / Bytes(this.portion_length),
)

EP_INFO_SUBCODE_DEVICE_CLASS_IDENTIFIER = 0x01
EP_INFO_ATTR_SIGNATURE = 0x01

# param1 SubCode, param2 bits 3:0 SlotID (used when a signature is requested).
GetEndpointInfo = Struct(
    *_hdr(Req.GET_ENDPOINT_INFO),
    "request_attributes" / Int8ul,
    "reserved" / Default(Bytes(3), bytes(3)),
    "nonce" / Opt((this.request_attributes & EP_INFO_ATTR_SIGNATURE) != 0, Bytes(32)),
)

# sig_size > 0 when the request asked for a signature: then the Nonce is present too.
EndpointInfo = Struct(
    *_hdr(Rsp.ENDPOINT_INFO),  # param2 bits 3:0 SlotID
    "reserved" / Default(Int32ul, 0),
    "nonce" / Opt(this._params.sig_size > 0, Bytes(32)),
    "ep_info_length" / Rebuild(Int32ul, len_(this.ep_info)),
    "ep_info" / Bytes(this.ep_info_length),
    "signature" / Bytes(this._params.sig_size),
)

# --- Helpers ---------------------------------------------------------------------------------

_DEFAULT_PARAMS = {
    "hash_size": 0,
    "sig_size": 0,
    "exchange_size": 0,
    "meas_summary_size": 0,
    "verify_size": 0,
    "multi_key": 0,  # SPDM 1.3 multi-key connection (extra DIGESTS fields)
}


def decode(fmt: Any, data: bytes, *, dword_padding: bool = False, **params: int) -> Any:
    """Parse *data* with *fmt*; raises MessageFormatError on any mismatch.

    Trailing bytes are an error, except with `dword_padding`: a DOE data object carries the
    SPDM message zero-padded to a DWORD multiple (PCIe 6.x DOE: Length counts DWORDs), and
    SPDM messages are self-delimiting, so up to three zero bytes that make the total a
    multiple of four are accepted. The result's `raw` item holds the message without that
    padding, which is what transcripts must hash.
    """
    ctx = {**_DEFAULT_PARAMS, **params}
    stream = io.BytesIO(data)
    try:
        parsed = compiled_parse(fmt, stream, ctx)
    except ConstructError as exc:
        raise MessageFormatError(str(exc).splitlines()[0]) from exc
    except (TypeError, ValueError) as exc:  # e.g. negative computed sizes
        raise MessageFormatError(str(exc)) from exc
    used = stream.tell()
    rest = data[used:]
    if rest and not (dword_padding and len(data) % 4 == 0 and len(rest) < 4 and not any(rest)):
        raise MessageFormatError(f"{len(rest)} trailing bytes")
    if hasattr(parsed, "__setitem__"):
        parsed["raw"] = data[:used]
    return parsed


def encode(fmt: Any, fields: dict[str, Any], **params: int) -> bytes:
    ctx = {**_DEFAULT_PARAMS, **params}
    try:
        out = compiled_build(fmt, fields, ctx)
    except ConstructError as exc:
        raise MessageFormatError(str(exc).splitlines()[0]) from exc
    return out


def compile_declarations() -> int:
    """Compile every message declaration now rather than on first use (≈ 2 ms each,
    docs/benchmarks.md §4): a server calls this before it listens, so the first connect
    after start does not pay for it.  Returns how many declarations there are."""
    fmts = [obj for obj in globals().values() if isinstance(obj, Struct)]
    for fmt in fmts:
        compiled(fmt)
    return len(fmts)


def header(data: bytes) -> Any:
    if len(data) < HEADER_SIZE:
        raise MessageFormatError("message shorter than the SPDM header")
    return compiled(Header).parse(data[:HEADER_SIZE])
