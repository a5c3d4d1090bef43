"""Names the fault plans match on: one per plaintext request, whatever protocol it is.

An SPDM request is named by its request code (`KEY_EXCHANGE`).  A VENDOR_DEFINED_REQUEST
carrying a PCI-SIG protocol (PCIe 6.2 §6.31.4) is named by the message inside it: an
IDE_KM object (`KEY_PROG`, §6.33.3) or a TDISP request (`LOCK_INTERFACE_REQUEST`,
§11.3), so a rule can break one IDE_KM or TDISP step inside the secure session.  The
three name sets are disjoint, so a bare name says which protocol it belongs to.
"""

from __future__ import annotations

from typing import Literal

from construct import ConstructError

from spdm.codes import Req, Rsp
from tdisp.codes import RequestCode
from tdisp.idekm_messages import ObjectId
from tdisp.vendor_defined import ProtocolId, SpdmVendorDefined

Protocol = Literal["spdm", "idekm", "tdisp"]

SPDM_NAMES = frozenset(Req.__members__)
# The IDE_KM objects a requester sends (the others are the device's answers).
IDEKM_NAMES = frozenset({"QUERY", "KEY_PROG", "K_SET_GO", "K_SET_STOP"})
TDISP_NAMES = frozenset(RequestCode.__members__)


def protocol_of(name: str) -> Protocol | None:
    if name in SPDM_NAMES:
        return "spdm"
    if name in IDEKM_NAMES:
        return "idekm"
    if name in TDISP_NAMES:
        return "tdisp"
    return None


def vdm_payload(message: bytes) -> bytes | None:
    """The PCI-SIG payload (from ProtocolID on) of an SPDM vendor-defined message."""
    if len(message) < 2 or message[1] not in (Req.VENDOR_DEFINED_REQUEST,
                                              Rsp.VENDOR_DEFINED_RESPONSE):
        return None
    try:
        return bytes(SpdmVendorDefined.parse(message).body.payload)
    except (ConstructError, ValueError):
        return None


def message_name(message: bytes) -> str:
    """The name of one plaintext request (see the module docstring); `0xNN` for an
    unknown code, `short` for less than a header."""
    if len(message) < 2:
        return "short"
    code = message[1]
    if code == Req.VENDOR_DEFINED_REQUEST:
        payload = vdm_payload(message) or b""
        if payload[:1] == bytes([ProtocolId.IDE_KM]) and len(payload) >= 2 \
                and payload[1] in ObjectId._value2member_map_:
            return ObjectId(payload[1]).name
        # TDISP header: TDISPVersion, MessageType (§11.3.1), after the ProtocolID.
        if payload[:1] == bytes([ProtocolId.TDISP]) and len(payload) >= 3 \
                and payload[2] in RequestCode._value2member_map_:
            return RequestCode(payload[2]).name
    if code in Req._value2member_map_:
        return Req(code).name
    return f"0x{code:02x}"


def build_vdm(version: int, code: int, payload: bytes, param1: int = 0,
              param2: int = 0) -> bytes:
    """An SPDM VENDOR_DEFINED_REQUEST/RESPONSE carrying a PCI-SIG `payload`."""
    out: bytes = SpdmVendorDefined.build({
        "version": version, "code": code, "param1": param1, "param2": param2,
        "body": {"payload": payload},
    })
    return out


def with_vdm_payload(message: bytes, payload: bytes) -> bytes:
    """`message` (an SPDM VENDOR_DEFINED message) with its PCI-SIG payload replaced."""
    vdm = SpdmVendorDefined.parse(message)
    return build_vdm(vdm.version, vdm.code, payload, vdm.param1, vdm.param2)
