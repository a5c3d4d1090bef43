"""One-line summaries of DOE objects and SPDM / IDE_KM / TDISP messages for the trace.

Every message is parsed with the declarations the engines use (spdm.messages,
tdisp.idekm_messages, tdisp.messages, tdisp.vendor_defined); where a format needs
negotiated sizes, only its fixed leading fields are parsed (`_prefix` builds a Struct
from the declaration's own leading subcons).  Nothing here prints key material: KEY_PROG
shows its slot, never its key or IFV; nonces, signatures and DHE values are not shown.

`Decoder` keeps the little connection state a summary needs (the selected algorithms,
the last request, the pending KEY_EXCHANGE's halves of the session id).  One decoder per
trace: both directions of one connection go through it in order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from construct import ConstructError, Struct

from spdm import messages as m
from spdm.algorithms import (
    Aead,
    AlgType,
    BaseAsym,
    BaseHash,
    Dhe,
    Kem,
    MeasHash,
    PqcAsym,
    asym_key,
    asym_key_name,
    signature_size,
)
from spdm.codes import (
    CertModel,
    ErrorCode,
    KeyPairAsym,
    KeyPairCap,
    KeyUsage,
    Req,
    ReqCap,
    Rsp,
    RspCap,
)
from tdisp import idekm_messages as ik
from tdisp import messages as tm
from tdisp.codes import LockFlags, RequestCode, ResponseCode, TdiState, error_name
from tdisp.errors import MalformedMessage
from tdisp.vendor_defined import ProtocolId, SpdmVendorDefined
from vdev.doe import data_object as doe_object
from vdev.doe.data_object import (
    DOE_TYPE_CMA_SPDM,
    DOE_TYPE_DISCOVERY,
    DOE_TYPE_SECURED_CMA_SPDM,
    HEADER_DW,
    PCI_SIG_VENDOR_ID,
)

# Error codes that are flow control, not failures (DSP0274 ERROR: the requester retries
# with RESPOND_IF_READY / CHUNK_GET).
_FLOW_CONTROL = {ErrorCode.RESPONSE_NOT_READY, ErrorCode.LARGE_RESPONSE}
_KEY_UPDATE_OPS = {1: "UpdateKey", 2: "UpdateAllKeys", 3: "VerifyNewKey"}
_KEY_PAIR_OPS = {m.SET_KEY_PAIR_INFO_OP_CHANGE: "Change", m.SET_KEY_PAIR_INFO_OP_ERASE: "Erase",
                 m.SET_KEY_PAIR_INFO_OP_GENERATE: "Generate"}
_EP_INFO_SUBCODES = {m.EP_INFO_SUBCODE_DEVICE_CLASS_IDENTIFIER: "DeviceClassIdentifier"}


@dataclass(frozen=True)
class Summary:
    """What the trace shows of one message."""

    protocol: str  # "doe" | "spdm" | "idekm" | "tdisp"
    message: str  # e.g. "KEY_EXCHANGE_RSP", "LOCK_INTERFACE_REQUEST", "DISCOVERY"
    text: str  # the one-line summary, starting with `message`
    error: bool = False
    session: int | None = None  # a session id the message names (KEY_EXCHANGE_RSP)
    state: str | None = None  # a transition the message implies, where known


def _name(cls: type[enum.Enum], value: int) -> str:
    try:
        return str(cls(value).name)
    except ValueError:
        return f"{value:#x}"


def _flags(cls: type[enum.IntFlag], value: int) -> str:
    names = [str(f.name) for f in cls if f.value and value & f.value == f.value]
    rest = value & ~sum(f.value for f in cls if value & f.value == f.value)
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) or "0"


def _prefix(fmt: Any, last: str) -> Any:
    """The declaration's leading fields up to and including `last` (fixed-size ones)."""
    subs = []
    for sub in fmt.subcons:
        subs.append(sub)
        if sub.name == last:
            return Struct(*subs)
    raise KeyError(last)


def _parse(fmt: Any, data: bytes) -> Any:
    return fmt.parse(data)


def _version(v: int) -> str:
    return f"{v >> 4}.{v & 0xF}"


class Decoder:
    def __init__(self) -> None:
        self.asym = 0  # spdm.algorithms.asym_key: BaseAsym, or PqcAsym (SPDM 1.4) shifted
        self.hash = 0
        self.kem = 0
        # Large messages being reassembled from CHUNK_SEND / CHUNK_RESPONSE, by
        # (message name, handle), decoded whole once the last chunk is seen.
        self._chunks: dict[tuple[str, int], bytearray] = {}
        self._last_request: tuple[int, int, int] | None = None  # (code, param1, param2)
        self._pending_req_sid: int | None = None
        # The session whose handshake is under way: FINISH / FINISH_RSP in the clear
        # (HANDSHAKE_IN_THE_CLEAR) belong to it though no record names it.
        self._handshake_sid: int | None = None
        self._endpoint_info_signed = False  # the last GET_ENDPOINT_INFO asked for a signature

    # ---- DOE --------------------------------------------------------------------------

    def doe(self, obj: bytes, *, request: bool) -> Summary:
        if len(obj) < 4 * HEADER_DW:
            return Summary("doe", "DOE", f"DOE short object ({len(obj)} bytes)", error=True)
        h = doe_object.parse_header(obj)
        p = h.protocol
        payload = obj[4 * HEADER_DW :]
        size = f"{h.length_dw} DW"
        if p.vendor_id != PCI_SIG_VENDOR_ID:
            return Summary("doe", "DOE", f"DOE {p} {size}")
        if p.data_object_type == DOE_TYPE_DISCOVERY and len(payload) >= 4:
            if request:
                index, version = doe_object.parse_discovery_request(payload)
                return Summary("doe", "DISCOVERY",
                               f"DISCOVERY index={index} version={version}")
            proto, nxt = doe_object.parse_discovery_response(payload[:4])
            return Summary("doe", "DISCOVERY_RSP",
                           f"DISCOVERY_RSP {proto} ({_doe_name(proto.data_object_type)}) "
                           f"next={nxt}")
        if p.data_object_type == DOE_TYPE_SECURED_CMA_SPDM and len(payload) >= 4:
            sid = int.from_bytes(payload[:4], "little")
            return Summary("doe", "SECURED_SPDM",
                           f"SECURED_SPDM {size} session={sid:#010x} (encrypted record)",
                           session=sid)
        name = _doe_name(p.data_object_type)
        return Summary("doe", name, f"{name} {size}")

    # ---- SPDM -------------------------------------------------------------------------

    def spdm(self, msg: bytes, *, session: int | None = None) -> Summary:
        try:
            return self._spdm(msg, session)
        except (ConstructError, ValueError, KeyError, m.MessageFormatError,
                MalformedMessage) as exc:
            code = msg[1] if len(msg) > 1 else -1
            return Summary("spdm", _code_name(code),
                           f"{_code_name(code)} (undecodable: {str(exc).splitlines()[0]})")

    def _spdm(self, msg: bytes, session: int | None) -> Summary:
        h = m.header(msg)
        code, p1, p2 = int(h.code), int(h.param1), int(h.param2)
        name = _code_name(code)
        request = code >= 0x80
        last = self._last_request
        if request:
            self._last_request = (code, p1, p2)
        text = name
        extra = ""
        state = None
        sid: int | None = None
        if name == "VERSION":
            v = _parse(m.Version, msg)
            text += " " + " ".join(_version(e >> 8) for e in v.entries)
        elif name == "GET_CAPABILITIES" or name == "CAPABILITIES":
            c = _parse(m.Capabilities if name == "CAPABILITIES" else m.GetCapabilities, msg)
            text += f" v{_version(int(h.version))}"
            if c.get("flags") is not None:
                text += f" ct_exp={c.ct_exponent} flags=" + _flags(
                    RspCap if name == "CAPABILITIES" else ReqCap, int(c.flags))
            if c.get("data_transfer_size") is not None:
                text += f" dts={c.data_transfer_size} max_msg={c.max_spdm_msg_size}"
        elif name == "ALGORITHMS":
            a = _parse(m.Algorithms, msg)
            pq = int(h.version) >= 0x14  # PqcAsymSel and AlgTypes 6/7: DSP0274 1.4 §10.4
            pqc = int(a.pqc_asym_sel) if pq else 0
            self.asym, self.hash = asym_key(int(a.base_asym_sel), pqc), int(a.base_hash_sel)
            sel = {int(s.alg_type): int(s.supported) for s in a.alg_structs}
            self.kem = sel.get(AlgType.KEM, 0) if pq else 0
            exchange = (f"kem={_flags(Kem, self.kem)}" if self.kem
                        else f"dhe={_flags(Dhe, sel.get(AlgType.DHE, 0))}")
            text += (f" asym={asym_key_name(self.asym) or 0} hash={_flags(BaseHash, self.hash)}"
                     f" meas_hash={_flags(MeasHash, int(a.meas_hash_algo))}"
                     f" {exchange} aead={_flags(Aead, sel.get(AlgType.AEAD, 0))}")
            if sel.get(AlgType.REQ_PQC_ASYM):
                text += f" req_asym={_flags(PqcAsym, sel[AlgType.REQ_PQC_ASYM])}"
        elif name == "NEGOTIATE_ALGORITHMS":
            a = _parse(_prefix(m.NegotiateAlgorithms, "pqc_asym"), msg)
            text += (f" asym={_flags(BaseAsym, int(a.base_asym))}"
                     f" hash={_flags(BaseHash, int(a.base_hash))}")
            if int(h.version) >= 0x14:
                b = _parse(m.NegotiateAlgorithms, msg)
                kem = {int(s.alg_type): int(s.supported) for s in b.alg_structs}.get(AlgType.KEM)
                text += f" pqc_asym={_flags(PqcAsym, int(a.pqc_asym))}"
                if kem:
                    text += f" kem={_flags(Kem, kem)}"
        elif name == "DIGESTS":
            text += f" slots={p2:#04x}"
        elif name == "GET_CERTIFICATE":
            g = _parse(m.GetCertificate, msg[:8])
            text += f" slot={p1 & 0xF} offset={g.offset:#x} length={g.length:#x}"
        elif name == "CERTIFICATE":
            c = _parse(_prefix(m.Certificate, "remainder_length"), msg)
            text += (f" slot={p1 & 0xF} portion={c.portion_length:#x}"
                     f" remainder={c.remainder_length:#x}")
        elif name == "CHALLENGE":
            text += f" slot={p1} meas_summary={p2}"
        elif name == "CHALLENGE_AUTH":
            text += f" slot={p1 & 0xF} sig={_flags(BaseAsym, self.asym)}"
        elif name == "GET_MEASUREMENTS":
            signed = p1 & m.MEAS_ATTR_SIGNATURE
            text += f" index={p2:#x} {'signed' if signed else 'unsigned'}"
        elif name == "MEASUREMENTS":
            c = _parse(_prefix(m.Measurements, "number_of_blocks"), msg)
            text += f" blocks={c.number_of_blocks}"
            if last and last[0] == 0xE0 and last[1] & m.MEAS_ATTR_SIGNATURE:
                text += f" sig={self._sig()}"
        elif name == "KEY_EXCHANGE":
            k = _parse(_prefix(m.KeyExchange, "req_session_id"), msg)
            self._pending_req_sid = int(k.req_session_id)
            text += f" slot={p2} req_session={k.req_session_id:#06x} meas_summary={p1}"
            if self.kem:
                text += f" kem={_flags(Kem, self.kem)} encap_key={len(msg) - 40}B+opaque"
        elif name in ("KEY_EXCHANGE_RSP", "PSK_EXCHANGE_RSP"):
            fmt = m.KeyExchangeRsp if name == "KEY_EXCHANGE_RSP" else m.PskExchangeRsp
            k = _parse(_prefix(fmt, "rsp_session_id"), msg)
            if self._pending_req_sid is not None:
                sid = (int(k.rsp_session_id) << 16) | self._pending_req_sid
                self._handshake_sid = sid
                text += f" session={sid:#010x}"
                state = f"session {sid:#010x} HANDSHAKE"
            if name == "PSK_EXCHANGE_RSP":
                c = _parse(_prefix(m.PskExchangeRsp, "context_length"), msg)
                text += f" context={c.context_length}B"
            if name == "KEY_EXCHANGE_RSP":
                slot = last[2] if last and last[0] == 0xE4 else 0
                text = f"{name} slot={slot}" + text[len(name):]
                text += f" sig={self._sig()}"
                mut = msg[6] if len(msg) > 6 else 0
                if mut:
                    text += f" mut_auth={mut:#x}"
            if p1:
                text += f" heartbeat={p1}s"
        elif name == "PSK_EXCHANGE":
            k = _parse(_prefix(m.PskExchange, "opaque_length"), msg)
            self._pending_req_sid = int(k.req_session_id)
            text += (f" req_session={k.req_session_id:#06x} meas_summary={p1}"
                     f" hint={k.psk_hint_length}B context={k.context_length}B")
        elif name in ("CHUNK_SEND", "CHUNK_RESPONSE"):
            fmt = m.ChunkSend if name == "CHUNK_SEND" else m.ChunkResponse
            c = _parse(_prefix(fmt, "chunk_size"), msg)
            text += f" handle={p2} seq={c.chunk_seq_no} size={c.chunk_size}"
            start = 12
            if c.chunk_seq_no == 0 and len(msg) >= 16:
                text += f" large_message={int.from_bytes(msg[12:16], 'little')}"
                start = 16
                self._chunks[(name, p2)] = bytearray()
            buf = self._chunks.get((name, p2))
            if buf is not None:
                buf += msg[start : start + int(c.chunk_size)]
            if p1 & m.CHUNK_ATTR_LAST:
                text += " last"
                whole = self._chunks.pop((name, p2), None)
                if whole:
                    inner = self.spdm(bytes(whole), session=session)
                    text += f": {inner.text}"
                    state = inner.state
        elif name in ("CHUNK_GET", "CHUNK_SEND_ACK"):
            fmt = m.ChunkGet if name == "CHUNK_GET" else m.ChunkSendAck
            c = _parse(_prefix(fmt, "chunk_seq_no"), msg)
            text += f" handle={p2} seq={c.chunk_seq_no}"
            if name == "CHUNK_SEND_ACK":
                rest = msg[m.chunk_send_ack_header_size(int(h.version)):]
                if p1 & m.CHUNK_ACK_EARLY_ERROR:
                    text += " early_error"
                if len(rest) >= 2:
                    text += f" response={_code_name(rest[1])} ({len(rest)}B)"
        elif name in ("FINISH", "FINISH_RSP", "PSK_FINISH", "PSK_FINISH_RSP"):
            session = self._handshake_sid if session is None else session
            if name.endswith("_RSP") and session is not None:
                state = f"session {session:#010x} ESTABLISHED"
                self._handshake_sid = None
        elif name == "END_SESSION_ACK" and session is not None:
            state = f"session {session:#010x} ENDED"
        elif name == "END_SESSION" and p1 & 1:
            text += " clear_negotiated_state"
        elif name in ("KEY_UPDATE", "KEY_UPDATE_ACK"):
            text += f" op={_KEY_UPDATE_OPS.get(p1, hex(p1))} tag={p2:#x}"
        elif name in _PROVISIONING:
            text += self._provisioning(name, msg, int(h.version), p1, p2)
        elif name == "RESPOND_IF_READY":
            text += f" for={_code_name(p1)} token={p2}"
        elif name in ("VENDOR_DEFINED_REQUEST", "VENDOR_DEFINED_RESPONSE"):
            return self._vendor(msg, name, session)
        elif name == "ERROR":
            err = _name(ErrorCode, p1)
            text += f" {err} data={p2:#x}"
            return Summary("spdm", name, text, error=p1 not in _FLOW_CONTROL, session=sid)
        if session is not None:
            sid = session
        return Summary("spdm", name, text + extra, session=sid, state=state)

    def _provisioning(self, name: str, msg: bytes, version: int, p1: int, p2: int) -> str:
        """The fields of DSP0274 1.2/1.3's provisioning and device-information messages."""
        if name == "GET_CSR":
            c = _parse(m.GetCsr, msg)
            out = ""
            if version >= 0x13:  # Param1 KeyPairID, Param2 CertModel / CSRTrackingTag
                out += (f" key_pair={p1} model={_name(CertModel, p2 & 7)}"
                        f" tracking_tag={(p2 >> 3) & 7}{' overwrite' if p2 & 0x80 else ''}")
            return out + (f" requester_info={c.requester_info_length}B"
                          f" opaque={c.opaque_length}B")
        if name == "CSR":
            return f" csr={_parse(m.Csr, msg).csr_length}B"
        if name == "SET_CERTIFICATE":
            out = f" slot={p1 & 0xF}"
            if version >= 0x13:  # Param1 bits 6:4 CertModel, bit 7 Erase; Param2 KeyPairID
                out += f" model={_name(CertModel, (p1 >> 4) & 7)} key_pair={p2}"
                if p1 & 0x80:
                    return out + " erase"
            chain = _parse(m.SetCertificate, msg).cert_chain
            return out + f" chain={int.from_bytes(chain[:2], 'little')}B"
        if name == "SET_CERTIFICATE_RSP":
            return f" slot={p1 & 0xF}"
        if name == "GET_KEY_PAIR_INFO":
            return f" key_pair={_parse(m.GetKeyPairInfo, msg).key_pair_id}"
        if name == "KEY_PAIR_INFO":
            k = _parse(m.KeyPairInfo, msg)
            return (f" key_pair={k.key_pair_id}/{k.total_key_pairs}"
                    f" caps={_flags(KeyPairCap, k.capabilities)}"
                    f" usage={_flags(KeyUsage, k.current_key_usage)}"
                    f" asym={_flags(KeyPairAsym, k.current_asym_algo)}"
                    f" slots={k.assoc_cert_slot_mask:#04x} public_key={k.public_key_info_len}B")
        if name == "SET_KEY_PAIR_INFO":
            k = _parse(m.SetKeyPairInfo, msg)
            out = f" op={_KEY_PAIR_OPS.get(p1, hex(p1))} key_pair={k.key_pair_id}"
            if k.desired is not None:
                out += (f" usage={_flags(KeyUsage, k.desired.key_usage)}"
                        f" asym={_flags(KeyPairAsym, k.desired.asym_algo)}"
                        f" slots={k.desired.assoc_cert_slot_mask:#04x}")
            return out
        if name == "GET_MEASUREMENT_EXTENSION_LOG":
            g = _parse(m.GetMel, msg)
            return f" offset={g.offset} length={g.length}"
        if name == "MEASUREMENT_EXTENSION_LOG":
            g = _parse(m.MeasurementExtensionLog, msg)
            return f" portion={g.portion_length} remainder={g.remainder_length}"
        if name == "GET_ENDPOINT_INFO":
            g = _parse(m.GetEndpointInfo, msg)
            self._endpoint_info_signed = bool(g.request_attributes & m.EP_INFO_ATTR_SIGNATURE)
            out = f" {_EP_INFO_SUBCODES.get(p1, hex(p1))}"
            return out + (f" signed slot={p2 & 0xF}" if self._endpoint_info_signed else "")
        if name == "ENDPOINT_INFO":
            signed, self._endpoint_info_signed = self._endpoint_info_signed, False
            e = m.EndpointInfo.parse(msg, sig_size=signature_size(self.asym) if signed else 0)
            out = f" ep_info={e.ep_info_length}B"
            return out + (f" slot={p2 & 0xF} sig={self._sig()}" if signed else "")
        return ""

    def _sig(self) -> str:
        return asym_key_name(self.asym) or "0"

    def _vendor(self, msg: bytes, name: str, session: int | None) -> Summary:
        try:
            v = SpdmVendorDefined.parse(msg)
        except ConstructError:
            std = int.from_bytes(msg[4:6], "little") if len(msg) >= 6 else -1
            return Summary("spdm", name, f"{name} standard={std:#x} (not PCI-SIG)",
                           session=session)
        payload = bytes(v.body.payload)
        if not payload:
            return Summary("spdm", name, f"{name} empty PCI-SIG payload", error=True)
        if payload[0] == ProtocolId.IDE_KM:
            return _idekm(payload, session)
        if payload[0] == ProtocolId.TDISP:
            return _tdisp(payload, session)
        return Summary("spdm", name, f"{name} PCI-SIG protocol {payload[0]:#x}", session=session)


_PROVISIONING = {"GET_CSR", "CSR", "SET_CERTIFICATE", "SET_CERTIFICATE_RSP", "GET_KEY_PAIR_INFO",
                 "KEY_PAIR_INFO", "SET_KEY_PAIR_INFO", "GET_MEASUREMENT_EXTENSION_LOG",
                 "MEASUREMENT_EXTENSION_LOG", "GET_ENDPOINT_INFO", "ENDPOINT_INFO"}


def _doe_name(data_object_type: int) -> str:
    return {DOE_TYPE_DISCOVERY: "DISCOVERY", DOE_TYPE_CMA_SPDM: "SPDM",
            DOE_TYPE_SECURED_CMA_SPDM: "SECURED_SPDM"}.get(data_object_type,
                                                        f"type {data_object_type:#x}")


def _code_name(code: int) -> str:
    for cls in (Req, Rsp):
        try:
            return str(cls(code).name)
        except ValueError:
            continue
    return f"SPDM_{code:#04x}"


def _slot(s: ik.KeySlot) -> str:
    sub = _name(ik.SubStream, s.sub_stream)
    port = f" port={s.port_index}" if s.port_index else ""
    return f"stream={s.stream_id} K{s.key_set} {'TX' if s.tx else 'RX'} {sub}{port}"


def _idekm(payload: bytes, session: int | None) -> Summary:
    msg = ik.parse_idekm(payload)
    name = _name(ik.ObjectId, payload[1])
    text = f"IDE_KM {name}"
    error = False
    if isinstance(msg, ik.Query):
        text += f" port={msg.port_index}"
    elif isinstance(msg, ik.QueryResp):
        text += (f" port={msg.port_index} bdf={msg.bus:02x}:{msg.dev_func >> 3:02x}."
                 f"{msg.dev_func & 7} segment={msg.segment} max_port={msg.max_port_index}")
    elif isinstance(msg, ik.KeyProg):
        text += " " + _slot(msg.slot)  # never the key or the IFV
    elif isinstance(msg, ik.KpAck):
        text += f" {_slot(msg.slot)} status={_name(ik.KpAckStatus, msg.status)}"
        error = msg.status != 0
    else:
        text += " " + _slot(msg.slot)
    return Summary("idekm", name, text, error=error, session=session)


def _tdisp(payload: bytes, session: int | None) -> Summary:
    msg = tm.decode_vdm(payload)
    code = msg.code
    name = _name(RequestCode, code) if code >= 0x80 else _name(ResponseCode, code)
    text = f"TDISP {name} tdi={msg.interface_id}"
    error = False
    state = None
    if isinstance(msg, tm.LockInterfaceRequest):
        text += (f" flags={_flags(LockFlags, msg.flags)} stream={msg.default_stream_id}"
                 f" mmio_offset={msg.mmio_reporting_offset:#x}")
    elif isinstance(msg, tm.LockInterfaceResponse):
        state = f"TDI {msg.interface_id} CONFIG_LOCKED"
    elif isinstance(msg, tm.GetDeviceInterfaceReport):
        text += f" offset={msg.offset:#x} length={msg.length:#x}"
    elif isinstance(msg, tm.DeviceInterfaceReport):
        text += f" portion={len(msg.portion):#x} remainder={msg.remainder_length:#x}"
    elif isinstance(msg, tm.DeviceInterfaceState):
        text += f" state={_name(TdiState, msg.state)}"
    elif isinstance(msg, tm.StartInterfaceResponse):
        state = f"TDI {msg.interface_id} RUN"
    elif isinstance(msg, tm.StopInterfaceResponse):
        state = f"TDI {msg.interface_id} CONFIG_UNLOCKED"
    elif isinstance(msg, tm.TdispVersion):
        text += " versions=" + ",".join(_version(v) for v in msg.versions)
    elif isinstance(msg, tm.TdispCapabilities):
        text += f" lock_flags={_flags(LockFlags, msg.lock_interface_flags_supported)}"
    elif isinstance(msg, tm.TdispError):
        text += f" {error_name(msg.error_code)} data={msg.error_data:#x}"
        error = True
    return Summary("tdisp", name, text, error=error, session=session, state=state)

