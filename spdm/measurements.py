"""DMTF measurement blocks (DSP0274 1.2 GET_MEASUREMENTS / MEASUREMENTS; Table 'DMTF
measurement specification format').

Values come from a caller-supplied provider so a device can change e.g. its configuration
digest at run time; the responder asks the provider on every GET_MEASUREMENTS.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from construct import ConstructError, Int32ul, Struct

from spdm import crypto
from spdm.algorithms import MeasHash
from spdm.codes import MEAS_SPEC_DMTF, MEAS_SUMMARY_ALL, MEAS_SUMMARY_TCB
from spdm.messages import (
    MEASUREMENT_BLOCK_HEADER_SIZE,
    DmtfMeasurement,
    MeasurementBlock,
    decode,
    encode,
)

#: A device-mode measurement's value (DSP0274 1.2 "Device mode field"): four u32 masks.
DeviceMode = Struct(
    "operational_mode_capabilities" / Int32ul,
    "operational_mode_state" / Int32ul,
    "device_mode_capabilities" / Int32ul,
    "device_mode_state" / Int32ul,
)

RAW_BIT_STREAM_FLAG = 0x80  # DMTFSpecMeasurementValueType bit 7
INDEX_MANIFEST = 0xFD  # reserved measurement indices (DSP0274 1.2 GET_MEASUREMENTS)
INDEX_DEVICE_MODE = 0xFE


class MeasurementType(enum.IntEnum):
    """DMTFSpecMeasurementValueType bits 6:0 (DSP0274 1.3 Table 'DMTF measurement ...')."""

    IMMUTABLE_ROM = 0x00
    MUTABLE_FIRMWARE = 0x01
    HARDWARE_CONFIG = 0x02
    FIRMWARE_CONFIG = 0x03
    MANIFEST = 0x04
    DEVICE_MODE = 0x05
    VERSION = 0x06
    SECURE_VERSION = 0x07
    HASH_EXTEND = 0x08
    INFORMATIONAL = 0x09


@dataclass(frozen=True)
class Measurement:
    """One measurement as supplied by the device model.

    `value` is the raw measured data; the responder emits either that raw bit stream or its
    digest under MeasurementHashAlgo. `raw_only` forces the raw form (e.g. a version
    string or device mode, which DSP0274 reports as raw bit streams).
    `tcb` marks it as part of the TCB for the TCB-component summary hash.
    """

    index: int
    type: MeasurementType
    value: bytes
    raw_only: bool = False
    tcb: bool = True


MeasurementProvider = Callable[[], Sequence[Measurement]]


def block_bytes(m: Measurement, meas_hash: int, *, raw_requested: bool = False) -> bytes:
    """Encode one measurement block: Index || MeasSpec || Size u16 || DMTF measurement."""
    if m.raw_only or raw_requested or meas_hash == MeasHash.RAW_BIT_STREAM:
        vtype = int(m.type) | RAW_BIT_STREAM_FLAG
        value = m.value
    else:
        vtype = int(m.type)
        value = crypto.meas_digest(meas_hash, m.value)
    dmtf = encode(DmtfMeasurement, {"value_type": vtype, "value": value})
    return encode(
        MeasurementBlock, {"index": m.index, "meas_spec": MEAS_SPEC_DMTF, "measurement": dmtf}
    )


@dataclass(frozen=True)
class ParsedBlock:
    index: int
    meas_spec: int
    value_type: int
    value: bytes
    raw: bytes

    @property
    def is_raw(self) -> bool:
        return bool(self.value_type & RAW_BIT_STREAM_FLAG)


def parse_record(record: bytes, count: int) -> list[ParsedBlock]:
    """Split a MeasurementRecord into `count` blocks; raises ValueError when inconsistent."""
    out: list[ParsedBlock] = []
    pos = 0
    for _ in range(count):
        if pos + MEASUREMENT_BLOCK_HEADER_SIZE > len(record):
            raise ValueError("measurement record truncated")
        try:
            blk = MeasurementBlock.parse(record[pos:])  # the first block; the rest follows
        except ConstructError:
            raise ValueError("measurement block truncated") from None
        size = MEASUREMENT_BLOCK_HEADER_SIZE + blk.size
        raw = record[pos : pos + size]
        if blk.meas_spec != MEAS_SPEC_DMTF:
            raise ValueError("unsupported measurement specification")
        dmtf = decode(DmtfMeasurement, blk.measurement)
        out.append(ParsedBlock(blk.index, blk.meas_spec, dmtf.value_type, dmtf.value, raw))
        pos += size
    if pos != len(record):
        raise ValueError("trailing bytes after measurement blocks")
    return out


def summary_hash(
    measurements: Sequence[Measurement], meas_hash: int, base_hash: int, kind: int
) -> bytes:
    """MeasurementSummaryHash (DSP0274 1.2 CHALLENGE_AUTH field description): Hash of the
    concatenated measurement blocks — all of them for 0xFF, the TCB ones for 0x01; empty
    for type 0. Which blocks are TCB is device policy (libspdm's sample uses only the
    immutable ROM); here it is `Measurement.tcb`."""
    if kind not in (MEAS_SUMMARY_TCB, MEAS_SUMMARY_ALL):
        return b""
    blocks = b"".join(
        block_bytes(m, meas_hash)
        for m in sorted(measurements, key=lambda m: m.index)
        if kind == MEAS_SUMMARY_ALL or m.tcb
    )
    return crypto.digest(base_hash, blocks)


def default_measurements(
    *,
    firmware: bytes = b"vdev firmware image",
    config: bytes = b"",
    version: str = "vdev 0.1.0",
    rom: bytes = b"vdev boot rom",
) -> list[Measurement]:
    """A plausible default set: ROM, firmware, hardware config, firmware config and version
    string at indices 1-5, the measurement manifest at 0xFD and the device mode at 0xFE
    (the indices DSP0274 1.2 reserves for them; libspdm
    SPDM_MEASUREMENT_BLOCK_MEASUREMENT_INDEX_MEASUREMENT_MANIFEST / _DEVICE_MODE)."""
    return [
        Measurement(1, MeasurementType.IMMUTABLE_ROM, rom),
        Measurement(2, MeasurementType.MUTABLE_FIRMWARE, firmware),
        Measurement(3, MeasurementType.HARDWARE_CONFIG, b"vdev hardware configuration"),
        Measurement(4, MeasurementType.FIRMWARE_CONFIG, config),
        Measurement(5, MeasurementType.VERSION, version.encode(), raw_only=True, tcb=False),
        Measurement(INDEX_MANIFEST, MeasurementType.MANIFEST, b'{"device":"vdev"}', tcb=False),
        # Structured device mode: OperationalModeCapabilities/State, DeviceModeCapabilities/
        # State, each u32 (DSP0274 1.2 Table 'Device mode field').
        Measurement(
            INDEX_DEVICE_MODE,
            MeasurementType.DEVICE_MODE,
            DeviceMode.build({"operational_mode_capabilities": 0x0000_0006,
                              "operational_mode_state": 0x0000_0002,
                              "device_mode_capabilities": 0, "device_mode_state": 0}),
            raw_only=True,
        ),
    ]
