"""The DMTF measurement extension log (DSP0274 1.3 GET_MEASUREMENT_EXTENSION_LOG, MEL
specification DMTF) and the GET_ENDPOINT_INFO DeviceClassIdentifier.

DMTF MEL::

    NumberOfEntries u32 | MELEntriesLen u32 | Reserved u64 | MELEntries
    entry: MELIndex u32 | MeasIndex u8 | Reserved[3] |
           DMTFSpecMeasurementValueType u8 | DMTFSpecMeasurementValueSize u16 | value

(layout as libspdm's spdm_measurement_extension_log_dmtf_t / spdm_mel_entry_dmtf_t).  Each
entry says which measurement block it extends (MeasIndex): a hash-extend block whose
value a verifier recomputes from the entries (`extend`).

DeviceClassIdentifier (EPInfo of SubCode 1)::

    NumIdentifiers u8 | Reserved[3] | elements
    element: IdElemLength u8 | SVH (ID u8, VendorIDLen u8, VendorID) | NumSubIds u8 |
             sub ids (SubIdLen u8 | SubId)

(libspdm spdm_endpoint_info_device_class_identifier_t and _element_t); IdElemLength
counts the element's bytes after itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from construct import (
    Array,
    Bytes,
    Const,
    ConstructError,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Struct,
    this,
)

MelEntryFormat = Struct(
    "mel_index" / Int32ul,
    "meas_index" / Int8ul,
    "reserved" / Const(bytes(3)),
    "value_type" / Int8ul,
    "value_size" / Int16ul,
    "value" / Bytes(this.value_size),
)
MEL_HEADER = 16
SVH_PCISIG = 0x03  # SPDM registry ID of the PCI-SIG (DSP0274 'Standards body or vendor')


@dataclass(frozen=True)
class MelEntry:
    mel_index: int
    meas_index: int
    value_type: int
    value: bytes


def build_mel(entries: Sequence[MelEntry]) -> bytes:
    body = b"".join(MelEntryFormat.build({
        "mel_index": e.mel_index, "meas_index": e.meas_index, "value_type": e.value_type,
        "value_size": len(e.value), "value": e.value}) for e in entries)
    header: bytes = Struct("n" / Int32ul, "len" / Int32ul, "reserved" / Int64ul).build(
        {"n": len(entries), "len": len(body), "reserved": 0})
    return header + body


def parse_mel(data: bytes) -> list[MelEntry]:
    """The entries of a DMTF MEL; ValueError when the counts do not add up."""
    if len(data) < MEL_HEADER:
        raise ValueError("MEL shorter than its header")
    count = int.from_bytes(data[0:4], "little")
    length = int.from_bytes(data[4:8], "little")
    if MEL_HEADER + length != len(data):
        raise ValueError(f"MELEntriesLen {length} but {len(data) - MEL_HEADER} bytes follow")
    out: list[MelEntry] = []
    pos = MEL_HEADER
    for _ in range(count):
        try:
            e = MelEntryFormat.parse(data[pos:])
        except ConstructError as exc:
            raise ValueError(f"MEL entry {len(out)}: {exc}") from None
        out.append(MelEntry(e.mel_index, e.meas_index, e.value_type, bytes(e.value)))
        pos += 11 + e.value_size
    if pos != len(data):
        raise ValueError("bytes after the last MEL entry")
    return out


def extend(entries: Sequence[MelEntry], meas_index: int) -> bytes:
    """The value of hash-extend block `meas_index` after `entries`: starting from 48 zero
    bytes, value = SHA-384(value || SHA-384(entry value)) for each entry naming it, in
    MELIndex order (a PCR-style extend; the block carries it as a raw bit stream)."""
    value = bytes(48)
    for e in sorted(entries, key=lambda e: e.mel_index):
        if e.meas_index == meas_index:
            value = hashlib.sha384(value + hashlib.sha384(e.value).digest()).digest()
    return value


@dataclass(frozen=True)
class ClassIdentifier:
    """One DeviceClassIdentifier element: a registry (SVH) and its sub-identifiers."""

    svh_id: int
    vendor_id: bytes
    sub_ids: tuple[bytes, ...]


_Element = Struct(
    "svh_id" / Int8ul,
    "vendor_id_len" / Int8ul,
    "vendor_id" / Bytes(this.vendor_id_len),
    "num_sub_ids" / Int8ul,
    "sub_ids" / Array(this.num_sub_ids, Struct("len" / Int8ul, "id" / Bytes(this.len))),
)


def device_class_identifier(elements: Sequence[ClassIdentifier]) -> bytes:
    out = bytearray([len(elements), 0, 0, 0])
    for el in elements:
        body = _Element.build({
            "svh_id": el.svh_id, "vendor_id_len": len(el.vendor_id),
            "vendor_id": el.vendor_id, "num_sub_ids": len(el.sub_ids),
            "sub_ids": [{"len": len(s), "id": s} for s in el.sub_ids]})
        out += bytes([len(body)]) + body
    return bytes(out)


def parse_device_class_identifier(data: bytes) -> list[ClassIdentifier]:
    if len(data) < 4:
        raise ValueError("DeviceClassIdentifier shorter than its header")
    out: list[ClassIdentifier] = []
    pos = 4
    for _ in range(data[0]):
        if pos >= len(data):
            raise ValueError("DeviceClassIdentifier truncated")
        size = data[pos]
        body = data[pos + 1: pos + 1 + size]
        try:
            el = _Element.parse(body)
        except ConstructError as exc:
            raise ValueError(f"element {len(out)}: {exc}") from None
        if len(_Element.build(el)) != size:
            raise ValueError(f"element {len(out)}: IdElemLength {size} does not match")
        out.append(ClassIdentifier(el.svh_id, bytes(el.vendor_id),
                                   tuple(bytes(s.id) for s in el.sub_ids)))
        pos += 1 + size
    if pos != len(data):
        raise ValueError("bytes after the last DeviceClassIdentifier element")
    return out


def pci_class_identifier(vendor_id: int, device_id: int, subsystem_vendor_id: int,
                         subsystem_id: int, class_code: int, revision: int) -> bytes:
    """EPInfo for a PCI function: one PCI-SIG element, VendorID the PCI Vendor ID and
    sub-identifiers Device ID, Subsystem Vendor ID, Subsystem ID (u16 each), Class Code
    (3 bytes) and Revision ID, all little-endian as in configuration space (our layout:
    no registry defines PCI sub-identifiers for this element)."""
    return device_class_identifier([ClassIdentifier(
        SVH_PCISIG, vendor_id.to_bytes(2, "little"),
        (device_id.to_bytes(2, "little"), subsystem_vendor_id.to_bytes(2, "little"),
         subsystem_id.to_bytes(2, "little"), class_code.to_bytes(3, "little"),
         bytes([revision])))])
