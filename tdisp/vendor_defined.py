"""PCI-SIG vendor-defined message framing (PCIe 6.2 §6.31.4, DSP0274 VENDOR_DEFINED).

An SPDM VENDOR_DEFINED_REQUEST/RESPONSE carrying a PCI-SIG protocol looks like

    SPDMVersion | 0xFE / 0x7E | Param1 | Param2                 (SPDM header)
    StandardID u16 = 0x0003 (PCI-SIG in the DMTF registry)
    Len u8 = 2 | VendorID u16 = 0x0001 (PCI-SIG)
    ReqLength/RespLength u16 | ProtocolID u8 | protocol message

The SPDM engine owns the SPDM header; the piece handed to and returned by our handlers
("the VDM payload") starts at ProtocolID.  `PciSigVdmBody` declares the part between the
SPDM header and the payload so the requester side (TSM model) can wrap payloads too.
"""

from __future__ import annotations

import enum

from construct import (
    Const,
    ConstructError,
    GreedyBytes,
    Int8ul,
    Int16ul,
    Prefixed,
    Struct,
    Terminated,
)

from tdisp.errors import MalformedMessage

STANDARD_ID_PCISIG = 0x0003
PCISIG_VENDOR_ID = 0x0001
#: The VendorID field as SPDM's VENDOR_DEFINED carries it (u16 little-endian, §6.31.4).
PCISIG_VENDOR_ID_BYTES: bytes = Int16ul.build(PCISIG_VENDOR_ID)
SPDM_VENDOR_DEFINED_REQUEST = 0xFE
SPDM_VENDOR_DEFINED_RESPONSE = 0x7E


class ProtocolId(enum.IntEnum):
    """PCIe 6.2 Table 6-xx: protocols carried in PCI-SIG vendor-defined messages."""

    IDE_KM = 0x00
    TDISP = 0x01


PciSigVdmBody = Struct(
    "standard_id" / Const(STANDARD_ID_PCISIG, Int16ul),
    "vendor_id_len" / Const(2, Int8ul),
    "vendor_id" / Const(PCISIG_VENDOR_ID, Int16ul),
    "payload" / Prefixed(Int16ul, GreedyBytes),
    Terminated,
)

SpdmVendorDefined = Struct(
    "version" / Int8ul,
    "code" / Int8ul,
    "param1" / Int8ul,
    "param2" / Int8ul,
    "body" / PciSigVdmBody,
)


def wrap_spdm_request(spdm_version: int, payload: bytes) -> bytes:
    """A complete SPDM VENDOR_DEFINED_REQUEST carrying a PCI-SIG VDM payload."""
    return _wrap(spdm_version, SPDM_VENDOR_DEFINED_REQUEST, payload)


def wrap_spdm_response(spdm_version: int, payload: bytes) -> bytes:
    """A complete SPDM VENDOR_DEFINED_RESPONSE carrying a PCI-SIG VDM payload."""
    return _wrap(spdm_version, SPDM_VENDOR_DEFINED_RESPONSE, payload)


def _wrap(spdm_version: int, code: int, payload: bytes) -> bytes:
    out: bytes = SpdmVendorDefined.build(
        {"version": spdm_version, "code": code, "param1": 0, "param2": 0,
         "body": {"payload": payload}}
    )
    return out


def unwrap_spdm(message: bytes, expect_code: int) -> bytes:
    """The PCI-SIG VDM payload of an SPDM VENDOR_DEFINED message; checks the framing."""
    try:
        parsed = SpdmVendorDefined.parse(message)
    except ConstructError as exc:
        raise MalformedMessage(f"not a PCI-SIG VENDOR_DEFINED message: {exc}") from exc
    if parsed.code != expect_code:
        raise MalformedMessage(f"SPDM code 0x{parsed.code:02x}, expected 0x{expect_code:02x}")
    payload: bytes = parsed.body.payload
    return payload


def split_protocol(payload: bytes) -> tuple[int, bytes]:
    """(ProtocolID, protocol message) of a VDM payload; raises on an empty payload."""
    if not payload:
        raise MalformedMessage("empty PCI-SIG VDM payload")
    return payload[0], payload[1:]
