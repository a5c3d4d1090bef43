"""DOE data object wire format (PCIe r6.0 §6.30.1) and the Discovery protocol (§6.30.1.1).

Declared once with `construct`; the mailbox builds and parses through these.
Parsed headers and discovery requests and built headers and discovery
responses are memoised (they repeat for every exchange of a protocol, and a
construct parse/build costs ~10 us; DOE traffic is on the config-access hot
path).  Results are immutable, errors are never cached.

Header (2 DW, little-endian as every config access):
  DW0: Vendor ID u16 | Data Object Type u8 | reserved u8
  DW1: Length bits 17:0 in DW, *including* the header; 0 encodes 2^18 DW.
Discovery request payload (1 DW): Index u8 | Version u8 | reserved u16
Discovery response payload (1 DW): Vendor ID u16 | Data Object Type u8 | Next Index u8
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from construct import ExprAdapter, Int8ul, Int16ul, Int32ul, Padding, Struct


class DoeError(Exception):
    """Root of the DOE package's exceptions (vdev.doe)."""


PCI_SIG_VENDOR_ID = 0x0001
DOE_TYPE_DISCOVERY = 0x00
DOE_TYPE_CMA_SPDM = 0x01
DOE_TYPE_SECURED_CMA_SPDM = 0x02

HEADER_DW = 2
MAX_OBJECT_DW = 1 << 18  # §6.30.1: Length is 18 bits, 0 means 2^18
_LENGTH_MASK = MAX_OBJECT_DW - 1


def _decode_length(raw: int, _ctx: Any) -> int:
    value = raw & _LENGTH_MASK  # bits 31:18 reserved
    return value if value else MAX_OBJECT_DW


def _encode_length(length: int, _ctx: Any) -> int:
    if not 1 <= length <= MAX_OBJECT_DW:
        raise ValueError(f"DOE object length {length} DW not in 1..2^18")
    return length & _LENGTH_MASK


DoeHeader = Struct(
    "vendor_id" / Int16ul,
    "data_object_type" / Int8ul,
    Padding(1),
    "length" / ExprAdapter(Int32ul, _decode_length, _encode_length),
)

DiscoveryRequest = Struct(
    "index" / Int8ul,
    "version" / Int8ul,
    Padding(2),
)

DiscoveryResponse = Struct(
    "vendor_id" / Int16ul,
    "data_object_type" / Int8ul,
    "next_index" / Int8ul,
)


@dataclass(frozen=True)
class DoeProtocolId:
    """A (Vendor ID, Data Object Type) pair naming a DOE protocol."""

    vendor_id: int
    data_object_type: int

    def __str__(self) -> str:
        return f"{self.vendor_id:04x}:{self.data_object_type:02x}"


DISCOVERY = DoeProtocolId(PCI_SIG_VENDOR_ID, DOE_TYPE_DISCOVERY)
CMA_SPDM = DoeProtocolId(PCI_SIG_VENDOR_ID, DOE_TYPE_CMA_SPDM)
SECURED_CMA_SPDM = DoeProtocolId(PCI_SIG_VENDOR_ID, DOE_TYPE_SECURED_CMA_SPDM)


@dataclass(frozen=True)
class DoeHeaderFields:
    protocol: DoeProtocolId
    length_dw: int


def parse_header(raw: bytes) -> DoeHeaderFields:
    """Parse the 8-byte header; `length_dw` already maps 0 to 2^18."""
    return _parse_header(bytes(raw[: 4 * HEADER_DW]))


@lru_cache(maxsize=256)
def _parse_header(raw: bytes) -> DoeHeaderFields:
    obj = DoeHeader.parse(raw)
    return DoeHeaderFields(DoeProtocolId(obj.vendor_id, obj.data_object_type), int(obj.length))


def build_object(protocol: DoeProtocolId, payload: bytes) -> bytes:
    """Header + payload, zero-padded to a DW multiple (as Linux pads requests)."""
    padded = payload + bytes(-len(payload) % 4)
    return _build_header(protocol.vendor_id, protocol.data_object_type,
                         HEADER_DW + len(padded) // 4) + padded


@lru_cache(maxsize=256)
def _build_header(vendor_id: int, data_object_type: int, length: int) -> bytes:
    return bytes(
        DoeHeader.build(
            {"vendor_id": vendor_id, "data_object_type": data_object_type, "length": length}
        )
    )


def parse_discovery_request(payload: bytes) -> tuple[int, int]:
    """Returns (index, version)."""
    return _parse_discovery_request(bytes(payload[:4]))


@lru_cache(maxsize=256)
def _parse_discovery_request(payload: bytes) -> tuple[int, int]:
    obj = DiscoveryRequest.parse(payload)
    return int(obj.index), int(obj.version)


def build_discovery_request(index: int, version: int = 2) -> bytes:
    return bytes(DiscoveryRequest.build({"index": index, "version": version}))


def build_discovery_response(protocol: DoeProtocolId, next_index: int) -> bytes:
    return _build_discovery_response(protocol.vendor_id, protocol.data_object_type, next_index)


@lru_cache(maxsize=256)
def _build_discovery_response(vendor_id: int, data_object_type: int, next_index: int) -> bytes:
    return bytes(
        DiscoveryResponse.build(
            {
                "vendor_id": vendor_id,
                "data_object_type": data_object_type,
                "next_index": next_index,
            }
        )
    )


def parse_discovery_response(payload: bytes) -> tuple[DoeProtocolId, int]:
    obj = DiscoveryResponse.parse(payload)
    return DoeProtocolId(obj.vendor_id, obj.data_object_type), int(obj.next_index)
