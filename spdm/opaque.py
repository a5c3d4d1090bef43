"""Opaque data carrying the DSP0277 secured-message version negotiation.

Formats (DSP0274 1.2 §'General opaque data format'; DSP0277 §'Secured Message opaque data'):

    OpaqueDataFmt1 (1.2+, OtherParams bit 1):
        TotalElements u8 || Reserved[3] || element*
    1.1 style (OpaqueDataFmt0 / spec-defined):
        SpecId u32 = 0x444D5446 ("FTMD" LE) || OpaqueVersion u8 = 1 || TotalElements u8 ||
        Reserved u16 || element*
    element:
        ID u8 (0 = DMTF) || VendorLen u8 (0) || OpaqueElementDataLen u16 || data || pad to 4
    DMTF secured-message element data:
        SMDataVersion u8 = 1 || SMDataID u8 || ...
            0 VERSION_SELECTION: SelectedVersion u16
            1 SUPPORTED_VERSION: VersionCount u8 || u16[VersionCount]
"""

from __future__ import annotations

from functools import lru_cache

from construct import (
    Array,
    Bytes,
    Const,
    ConstructError,
    Default,
    GreedyRange,
    If,
    Int8ul,
    Int16ul,
    Int32ul,
    Padding,
    Rebuild,
    Struct,
    Terminated,
    len_,
    this,
)

from spdm.errors import OpaqueError as OpaqueError  # re-exported: raised here

SPEC_ID_DMTF = 0x444D5446
SM_DATA_VERSION = 1
SM_VERSION_SELECTION = 0
SM_SUPPORTED_VERSION = 1

# DSP0277 versions, u16 as in VERSION entries (major 15:12, minor 11:8).
SECURED_VERSION_10 = 0x1000
SECURED_VERSION_11 = 0x1100
SECURED_VERSION_12 = 0x1200
DEFAULT_SECURED_VERSIONS = (SECURED_VERSION_10, SECURED_VERSION_11, SECURED_VERSION_12)
# DSP0274 "OpaqueDataLength": at most 1024 bytes in every message that carries OpaqueData.
MAX_OPAQUE_SIZE = 1024

Element = Struct(
    "id" / Default(Int8ul, 0),
    "vendor_len" / Rebuild(Int8ul, len_(this.vendor_id)),
    "vendor_id" / Default(Bytes(this.vendor_len), b""),
    "data_len" / Rebuild(Int16ul, len_(this.data)),
    "data" / Bytes(this.data_len),
    Padding(lambda c: (-(4 + c.vendor_len + c.data_len)) % 4),
)

Fmt1 = Struct(
    "total" / Rebuild(Int8ul, len_(this.elements)),
    "reserved" / Default(Bytes(3), bytes(3)),
    "elements" / Array(this.total, Element),
    Terminated,
)

Fmt0 = Struct(
    "spec_id" / Const(SPEC_ID_DMTF, Int32ul),
    "opaque_version" / Const(1, Int8ul),
    "total" / Rebuild(Int8ul, len_(this.elements)),
    "reserved" / Default(Int16ul, 0),
    "elements" / Array(this.total, Element),
    Terminated,
)

SmData = Struct(
    "sm_version" / Int8ul,
    "sm_id" / Int8ul,
    "selected" / If(this.sm_id == SM_VERSION_SELECTION, Int16ul),
    "count" / If(this.sm_id == SM_SUPPORTED_VERSION, Int8ul),
    "versions" / If(this.sm_id == SM_SUPPORTED_VERSION, Array(this.count, Int16ul)),
    "rest" / GreedyRange(Int8ul),
)


def _wrap(data: bytes, fmt1: bool) -> bytes:
    fmt = Fmt1 if fmt1 else Fmt0
    out: bytes = fmt.build({"elements": [{"id": 0, "vendor_id": b"", "data": data}]})
    return out


# Every KEY_EXCHANGE / PSK_EXCHANGE builds and parses the same few opaque blobs, and
# construct's interpreter (Element's Padding is a Python function, so it cannot be
# compiled) made that a visible share of a handshake: the results are cached by value.
@lru_cache(maxsize=64)
def build_supported_versions(versions: tuple[int, ...], *, fmt1: bool = True) -> bytes:
    data: bytes = SmData.build({"sm_version": SM_DATA_VERSION, "sm_id": SM_SUPPORTED_VERSION,
                                "selected": None, "count": len(versions),
                                "versions": list(versions), "rest": []})
    return _wrap(data, fmt1)


@lru_cache(maxsize=64)
def build_version_selection(version: int, *, fmt1: bool = True) -> bytes:
    data: bytes = SmData.build({"sm_version": SM_DATA_VERSION, "sm_id": SM_VERSION_SELECTION,
                                "selected": version, "count": None, "versions": None,
                                "rest": []})
    return _wrap(data, fmt1)


def parse_general(opaque: bytes, *, fmt1: bool = True) -> list[tuple[int, bytes, bytes]]:
    """The (registry ID, vendor ID, data) of each element of general opaque data (DSP0274
    'General opaque data format'); OpaqueError when the bytes do not follow it."""
    try:
        parsed = (Fmt1 if fmt1 else Fmt0).parse(opaque)
    except ConstructError as exc:
        raise OpaqueError(f"malformed opaque data: {exc}") from exc
    return [(el.id, bytes(el.vendor_id), bytes(el.data)) for el in parsed.elements]


def _sm_elements(opaque: bytes, fmt1: bool) -> list[object]:
    try:
        parsed = (Fmt1 if fmt1 else Fmt0).parse(opaque)
    except ConstructError as exc:
        raise OpaqueError(f"malformed opaque data: {exc}") from exc
    out: list[object] = []
    for el in parsed.elements:
        if el.id != 0 or len(el.data) < 2:
            continue  # other registries' elements are ignored
        try:
            sm = SmData.parse(el.data)
        except ConstructError as exc:
            raise OpaqueError("malformed secured-message element") from exc
        if sm.sm_version == SM_DATA_VERSION:
            out.append(sm)
    return out


def parse_supported_versions(opaque: bytes, *, fmt1: bool = True) -> list[int]:
    return list(_supported_versions(bytes(opaque), fmt1))


@lru_cache(maxsize=64)
def _supported_versions(opaque: bytes, fmt1: bool) -> tuple[int, ...]:
    for sm in _sm_elements(opaque, fmt1):
        if sm.sm_id == SM_SUPPORTED_VERSION:  # type: ignore[attr-defined]
            return tuple(sm.versions)  # type: ignore[attr-defined]
    raise OpaqueError("no SUPPORTED_VERSION element")


def parse_version_selection(opaque: bytes, *, fmt1: bool = True) -> int:
    return _version_selection(bytes(opaque), fmt1)


@lru_cache(maxsize=64)
def _version_selection(opaque: bytes, fmt1: bool) -> int:
    for sm in _sm_elements(opaque, fmt1):
        if sm.sm_id == SM_VERSION_SELECTION:  # type: ignore[attr-defined]
            return int(sm.selected)  # type: ignore[attr-defined]
    raise OpaqueError("no VERSION_SELECTION element")
