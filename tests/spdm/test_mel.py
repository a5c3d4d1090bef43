"""DMTF MEL and DeviceClassIdentifier layouts, pinned byte for byte (spdm.mel)."""

from __future__ import annotations

import hashlib

import pytest

from spdm.mel import (
    ClassIdentifier,
    MelEntry,
    build_mel,
    device_class_identifier,
    extend,
    parse_device_class_identifier,
    parse_mel,
    pci_class_identifier,
)


def test_mel_layout() -> None:
    entry = MelEntry(mel_index=0, meas_index=7, value_type=1, value=b"\xaa\xbb")
    data = build_mel([entry])
    # NumberOfEntries 1, MELEntriesLen 13, Reserved u64, then MELIndex u32, MeasIndex,
    # Reserved[3], DMTFSpecMeasurementValueType, ValueSize u16, value.
    assert data == bytes.fromhex("01000000" "0d000000" "0000000000000000"
                                 "00000000" "07" "000000" "01" "0200" "aabb")
    assert parse_mel(data) == [entry]
    with pytest.raises(ValueError):
        parse_mel(data[:-1])


def test_extend_is_pcr_style() -> None:
    a, b = MelEntry(0, 7, 1, b"a"), MelEntry(1, 7, 3, b"b")
    step = hashlib.sha384(bytes(48) + hashlib.sha384(b"a").digest()).digest()
    assert extend([a], 7) == step
    assert extend([b, a], 7) == hashlib.sha384(step + hashlib.sha384(b"b").digest()).digest()
    assert extend([a], 6) == bytes(48)


def test_device_class_identifier_layout() -> None:
    data = device_class_identifier([ClassIdentifier(3, b"\xed\x1d", (b"\x10\x7e",))])
    # NumIdentifiers, Reserved[3]; IdElemLength 8: SVH ID 3, VendorIDLen 2, VendorID,
    # NumSubIds 1, SubIdLen 2, SubId.
    assert data == bytes.fromhex("01000000" "08" "03" "02" "ed1d" "01" "02" "107e")
    assert parse_device_class_identifier(data) == [
        ClassIdentifier(3, b"\xed\x1d", (b"\x10\x7e",))]
    pci = parse_device_class_identifier(pci_class_identifier(0x1DED, 0x7E10, 0x1DED, 1,
                                                             0x120000, 1))
    assert pci[0].sub_ids == (b"\x10\x7e", b"\xed\x1d", b"\x01\x00", b"\x00\x00\x12", b"\x01")
