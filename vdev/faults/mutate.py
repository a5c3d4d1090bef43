"""How a fault changes one plaintext response (pure functions, no device here).

Each function takes the request and the response the engine produced and returns the
response to send instead, plus a few words saying what changed (for the log and the
trace).  Fields are found through the same construct declarations the engines use
(spdm.messages, tdisp.messages, tdisp.idekm_messages), never through offsets
written down here.  `NotApplicable` means the rule cannot act on this response (no such
field, an ERROR instead of the expected response, ...): the injector then sends the
response unchanged and says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from spdm import messages as m
from spdm.algorithms import NegotiatedAlgorithms
from spdm.codes import Req, Rsp
from tdisp import idekm_messages as ik
from tdisp import messages as tm
from tdisp.codes import PAGE_SIZE, RequestCode, ResponseCode
from tdisp.errors import MalformedMessage
from tdisp.interface_report import InterfaceReport
from tdisp.vendor_defined import ProtocolId
from vdev.faults.names import build_vdm, vdm_payload, with_vdm_payload


class NotApplicable(Exception):
    """The rule does not fit this response; the text says why."""


# Response declarations by code, for corrupting a named field.
_SPDM_FORMATS: dict[int, Any] = {
    Rsp.VERSION: m.Version, Rsp.CAPABILITIES: m.Capabilities, Rsp.ALGORITHMS: m.Algorithms,
    Rsp.DIGESTS: m.Digests, Rsp.CERTIFICATE: m.Certificate, Rsp.CHALLENGE_AUTH: m.ChallengeAuth,
    Rsp.MEASUREMENTS: m.Measurements, Rsp.KEY_EXCHANGE_RSP: m.KeyExchangeRsp,
    Rsp.FINISH_RSP: m.FinishRsp, Rsp.PSK_EXCHANGE_RSP: m.PskExchangeRsp,
    Rsp.VENDOR_DEFINED_RESPONSE: m.VendorDefinedResponse,
}
_HEADER_FIELDS = ("version", "code", "param1", "param2")
_TDISP_HEADER_FIELDS = ("version", "message_type")
# The IDE_KM object that answers each request object (PCIe 6.2 §6.33.3).
_IDEKM_RESPONSES: dict[str, Any] = {
    "QUERY": ik.QueryResp, "KEY_PROG": ik.KpAck, "K_SET_GO": ik.KGoStopAck,
    "K_SET_STOP": ik.KGoStopAck,
}
MAC_FIELD = "mac"  # corrupt field=mac: the secured record's MAC, not a message field


def _spdm_fields(fmt: Any) -> list[str]:
    """The named fields of an SPDM response declaration (what `m.decode` returns)."""
    return [sc.name for sc in fmt.subcons if sc.name and not sc.name.startswith("_")]


def _tdisp_fields(cls: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name != "interface_id"]


def _idekm_fields(cls: Any) -> list[str]:
    names = [f.name for f in dataclasses.fields(cls)]
    if "slot" in names:  # the KeySlot's own fields, not the object
        i = names.index("slot")
        names[i:i + 1] = [f.name for f in dataclasses.fields(ik.KeySlot)]
    return names


def response_fields(request: str) -> tuple[str, list[str]]:
    """The response to the request named `request` (vdev.faults.names) and the fields
    `corrupt field=` can name in it: the same declarations `corrupt_field` parses, so a
    rule checked here acts at run time (unless the device answers with an error)."""
    if request in _IDEKM_RESPONSES:
        cls = _IDEKM_RESPONSES[request]
        return cls.object_id.name, _idekm_fields(cls)
    if request in RequestCode.__members__:
        rsp = tm.RESPONSES[tm.RESPONSE_FOR[RequestCode[request]]]
        return (ResponseCode(rsp.code).name,
                [*_TDISP_HEADER_FIELDS, *_tdisp_fields(rsp)])
    if request == "RESPOND_IF_READY":  # answered with the response it was waiting for
        return "the awaited response", list(_HEADER_FIELDS)
    code = Req[request] - 0x80  # DSP0274: a response code is its request's minus 80h
    name = Rsp(code).name if code in Rsp._value2member_map_ else f"response to {request}"
    fmt = _SPDM_FORMATS.get(code)
    return name, list(dict.fromkeys([*_HEADER_FIELDS, *(_spdm_fields(fmt) if fmt else [])]))
_NEXT_VERSION = {0x10: 0x11, 0x11: 0x12, 0x12: 0x13, 0x13: 0x12}


def response_name(message: bytes) -> str:
    """SPDM response code name, or the IDE_KM / TDISP message inside a vendor response."""
    if len(message) < 2:
        return "short response"
    payload = vdm_payload(message) or b""
    if payload[:1] == bytes([ProtocolId.IDE_KM]) and len(payload) > 1 \
            and payload[1] in ik.ObjectId._value2member_map_:
        return ik.ObjectId(payload[1]).name
    if payload[:1] == bytes([ProtocolId.TDISP]) and len(payload) > 2 \
            and payload[2] in ResponseCode._value2member_map_:
        return ResponseCode(payload[2]).name
    code = message[1]
    return Rsp(code).name if code in Rsp._value2member_map_ else f"0x{code:02x}"


def vdm_response(request: bytes, payload: bytes) -> bytes:
    """A VENDOR_DEFINED_RESPONSE answering `request` with a PCI-SIG `payload`."""
    return build_vdm(request[0], Rsp.VENDOR_DEFINED_RESPONSE, payload)


def _require(response: bytes, *codes: int) -> None:
    if len(response) < 4 or response[1] not in codes:
        raise NotApplicable(f"the response is {response_name(response)}")


def _flip(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        if not value:
            raise NotApplicable("the field is empty")
        return bytes([value[0] ^ 0xFF]) + bytes(value[1:])
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value ^ 0x01
    raise NotApplicable(f"cannot corrupt a field of type {type(value).__name__}")


# ---- corrupt ------------------------------------------------------------------------------

def corrupt_offset(response: bytes, offset: int) -> tuple[bytes, str]:
    if not response:
        raise NotApplicable("the response is empty")
    at = offset if offset >= 0 else len(response) + offset
    at = min(max(at, 0), len(response) - 1)
    where = "last byte" if at == len(response) - 1 else f"byte {at}"
    return response[:at] + bytes([response[at] ^ 0xFF]) + response[at + 1 :], where


def _spdm_params(request: bytes, response: bytes, alg: NegotiatedAlgorithms
                 ) -> list[dict[str, Any]]:
    """Candidate construct parameters for parsing `response` (the request decides some)."""
    h = alg.hash_size
    base = {"hash_size": h, "sig_size": alg.sig_size, "exchange_size": alg.rsp_exchange_size}
    code = response[1]
    summary = 0
    if len(request) >= 4 and code == Rsp.CHALLENGE_AUTH and request[3]:
        summary = h
    if len(request) >= 4 and code == Rsp.KEY_EXCHANGE_RSP and request[2]:
        summary = h
    if code == Rsp.MEASUREMENTS:
        signed = len(request) >= 4 and request[2] & m.MEAS_ATTR_SIGNATURE
        return [{**base, "sig_size": alg.sig_size if signed else 0}]
    # ResponderVerifyData is absent when the handshake is in the clear.
    return [{**base, "meas_summary_size": summary, "verify_size": v} for v in (h, 0)]


def corrupt_field(request: bytes, response: bytes, name: str,
                  alg: NegotiatedAlgorithms) -> tuple[bytes, str]:
    """Flip the first byte (bytes) or bit 0 (integers) of the field `name`."""
    payload = vdm_payload(response)
    if payload is not None and payload[:1] == bytes([ProtocolId.TDISP]):
        return _corrupt_tdisp(response, payload, name)
    if payload is not None and payload[:1] == bytes([ProtocolId.IDE_KM]):
        return _corrupt_idekm(response, payload, name)
    if name in _HEADER_FIELDS and len(response) >= 4:
        i = _HEADER_FIELDS.index(name)
        return response[:i] + bytes([response[i] ^ 0x01]) + response[i + 1 :], name
    fmt = _SPDM_FORMATS.get(response[1]) if len(response) > 1 else None
    if fmt is None:
        raise NotApplicable(f"no field {name!r} known in {response_name(response)}")
    for params in _spdm_params(request, response, alg):
        try:
            parsed = m.decode(fmt, response, **params)
        except m.MessageFormatError:
            continue
        if name not in parsed or name.startswith("_") or name == "raw":
            fields = _spdm_fields(fmt)
            raise NotApplicable(f"{response_name(response)} has no field {name!r} "
                                f"(fields: {', '.join(fields)})")
        parsed[name] = _flip(parsed[name])
        return m.encode(fmt, dict(parsed), **params), name
    raise NotApplicable(f"{response_name(response)} did not parse")


def _corrupt_tdisp(response: bytes, payload: bytes, name: str) -> tuple[bytes, str]:
    try:
        msg = tm.decode_vdm(payload)
    except MalformedMessage as exc:
        raise NotApplicable(str(exc)) from None
    if name in ("version", "message_type"):
        i = 1 if name == "version" else 2
        return with_vdm_payload(response, payload[:i] + bytes([payload[i] ^ 0x01])
                             + payload[i + 1 :]), name
    names = _tdisp_fields(msg)
    if name not in names:
        raise NotApplicable(f"TDISP {response_name(response)} has no field {name!r} "
                            f"(fields: {', '.join(names) or 'none'})")
    changed = dataclasses.replace(msg, **{name: _flip(getattr(msg, name))})
    return with_vdm_payload(response, changed.encode_vdm()), name


def _corrupt_idekm(response: bytes, payload: bytes, name: str) -> tuple[bytes, str]:
    try:
        msg: Any = ik.parse_idekm(payload)
    except MalformedMessage as exc:
        raise NotApplicable(str(exc)) from None
    names = [f.name for f in dataclasses.fields(msg)]
    if name in names:
        changed = dataclasses.replace(msg, **{name: _flip(getattr(msg, name))})
    elif name in _idekm_fields(type(msg)):
        slot = msg.slot
        changed = dataclasses.replace(
            msg, slot=dataclasses.replace(slot, **{name: _flip(getattr(slot, name))}))
    else:
        raise NotApplicable(f"IDE_KM {response_name(response)} has no field {name!r}")
    return with_vdm_payload(response, changed.build()), name


# ---- version, slot --------------------------------------------------------------------

def wrong_version(response: bytes, version: int | None) -> tuple[bytes, str]:
    """A TDISP response gets another TDISPVersion, anything else another SPDMVersion."""
    payload = vdm_payload(response)
    if payload is not None and payload[:1] == bytes([ProtocolId.TDISP]) and len(payload) > 1:
        new = 0x20 if version is None else version
        text = f"TDISPVersion 0x{payload[1]:02x} -> 0x{new:02x}"
        return with_vdm_payload(response, payload[:1] + bytes([new]) + payload[2:]), text
    if not response:
        raise NotApplicable("the response is empty")
    new = _NEXT_VERSION.get(response[0], 0x12) if version is None else version
    return bytes([new]) + response[1:], f"SPDMVersion 0x{response[0]:02x} -> 0x{new:02x}"


def wrong_slot(response: bytes, slot: int | None) -> tuple[bytes, str]:
    """CERTIFICATE / CHALLENGE_AUTH naming another SlotID (Param1 bits 3:0)."""
    _require(response, Rsp.CERTIFICATE, Rsp.CHALLENGE_AUTH)
    old = response[2] & 0x0F
    new = (old + 1) % 8 if slot is None else slot
    return (response[:2] + bytes([(response[2] & 0xF0) | new]) + response[3:],
            f"SlotID {old} -> {new}")


# ---- TDISP ------------------------------------------------------------------------------

def _tdisp_response(response: bytes, cls: type[tm.T]) -> tm.T:
    payload = vdm_payload(response)
    try:
        msg = tm.decode_vdm(payload or b"")
    except MalformedMessage:
        msg = None
    if not isinstance(msg, cls):
        raise NotApplicable(f"the response is {response_name(response)}")
    return msg


def wrong_nonce(response: bytes) -> tuple[bytes, str]:
    """LOCK_INTERFACE_RESPONSE with a START_INTERFACE_NONCE the device never issued."""
    msg = _tdisp_response(response, tm.LockInterfaceResponse)
    changed = dataclasses.replace(msg, nonce=bytes(b ^ 0xFF for b in msg.nonce))
    return with_vdm_payload(response, changed.encode_vdm()), "START_INTERFACE_NONCE inverted"


def report_mismatch(response: bytes, offset: int, report: bytes) -> tuple[bytes, str]:
    """DEVICE_INTERFACE_REPORT whose portion comes from a report that differs from the
    locked one: the first MMIO range one page higher (or, with no MMIO range, another
    MSI-X Message Control) — what a device misreporting its interface looks like."""
    msg = _tdisp_response(response, tm.DeviceInterfaceReport)
    parsed = InterfaceReport.decode(report)
    if parsed.mmio_ranges:
        first = parsed.mmio_ranges[0]
        moved = dataclasses.replace(first, first_page=first.first_page + PAGE_SIZE)
        other = dataclasses.replace(parsed, mmio_ranges=(moved, *parsed.mmio_ranges[1:]))
        text = f"MMIO range {first.range_id} reported at {moved.first_page:#x}"
    else:
        other = dataclasses.replace(parsed,
                                    msix_message_control=parsed.msix_message_control ^ 1)
        text = "MSI-X Message Control changed"
    forged = other.encode()
    portion = forged[offset : offset + len(msg.portion)]
    if portion == msg.portion:
        raise NotApplicable(f"the changed field is outside this portion (offset {offset})")
    changed = dataclasses.replace(msg, portion=portion)
    return with_vdm_payload(response, changed.encode_vdm()), text


# ---- answers instead of the engine -------------------------------------------------------

def spdm_error(version: int, code: int) -> bytes:
    return m.encode(m.Error, {"version": version, "param1": code, "param2": 0,
                              "extended": b""})


def tdisp_error(request: bytes, code: int) -> bytes:
    """TDISP_ERROR for the TDISP request inside `request` (§11.3.17)."""
    payload = vdm_payload(request) or b""
    try:
        header = tm.decode_header(payload[1:])
    except MalformedMessage as exc:
        raise NotApplicable(str(exc)) from None
    error = tm.TdispError(header.interface_id, error_code=code)
    return vdm_response(request, error.encode_vdm())


def kp_ack_error(request: bytes, status: int) -> bytes:
    """KP_ACK with a failure Status for the KEY_PROG inside `request` (§6.33.3)."""
    payload = vdm_payload(request) or b""
    try:
        prog = ik.KeyProg.parse(payload)
    except MalformedMessage as exc:
        raise NotApplicable(str(exc)) from None
    return vdm_response(request, ik.KpAck(prog.slot, status).build())
