"""DMTF measurement blocks, provider-driven values, summary hashes."""

from __future__ import annotations

import hashlib

from spdm.algorithms import BaseHash, MeasHash
from spdm.codes import MEAS_SUMMARY_ALL, MEAS_SUMMARY_TCB
from spdm.identity import DeviceIdentity
from spdm.measurements import (
    Measurement,
    MeasurementType,
    block_bytes,
    default_measurements,
    parse_record,
    summary_hash,
)
from spdm.responder import AlgorithmPriorities
from tests.helpers.spdm_harness import make_link


def test_block_layout_digest() -> None:
    m = Measurement(2, MeasurementType.MUTABLE_FIRMWARE, b"fw")
    blk = block_bytes(m, MeasHash.SHA_256)
    digest = hashlib.sha256(b"fw").digest()
    # Index, MeasurementSpecification=DMTF, MeasurementSize, DMTF type, value size, value
    assert blk == bytes([2, 1]) + (35).to_bytes(2, "little") + bytes([1]) + (32).to_bytes(
        2, "little") + digest


def test_block_layout_raw() -> None:
    m = Measurement(7, MeasurementType.VERSION, b"1.0", raw_only=True)
    blk = block_bytes(m, MeasHash.SHA_384)
    assert blk[4] == 0x86 and blk[7:] == b"1.0"
    assert parse_record(blk, 1)[0].is_raw


def test_summary_hash_filters_tcb() -> None:
    meas = default_measurements()
    all_h = summary_hash(meas, MeasHash.SHA_384, BaseHash.SHA_384, MEAS_SUMMARY_ALL)
    expected = hashlib.sha384(b"".join(block_bytes(m, MeasHash.SHA_384) for m in meas)).digest()
    assert all_h == expected
    tcb = summary_hash(meas, MeasHash.SHA_384, BaseHash.SHA_384, MEAS_SUMMARY_TCB)
    assert tcb != all_h
    assert summary_hash(meas, MeasHash.SHA_384, BaseHash.SHA_384, 0) == b""


def test_provider_changes_are_visible(p384_identity: DeviceIdentity) -> None:
    config = {"value": b"cfg-A"}
    link = make_link(p384_identity, rsp={
        "measurements": lambda: default_measurements(config=config["value"])})
    link.connect()
    r = link.requester
    before = link.run(r.get_measurements(4))[0].value
    config["value"] = b"cfg-B"
    after = link.run(r.get_measurements(4))[0].value
    assert before != after == hashlib.sha384(b"cfg-B").digest()


def test_unsigned_then_signed_transcript(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity)
    link.connect()
    r = link.requester
    # Unsigned requests accumulate into L1/L2, the signed one covers them all.
    assert link.run(r.get_measurements(0, signed=False)) == 7
    link.run(r.get_measurements(1, signed=False))
    link.run(r.get_measurements(2, signed=True))
    assert not r.transcript.m and not link.responder.transcript.m


def test_raw_meas_hash_selection(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity, rsp={
        "algorithms": AlgorithmPriorities(meas_hash=(MeasHash.RAW_BIT_STREAM,))})
    link.connect()
    blocks = link.run(link.requester.get_measurements())
    assert all(b.is_raw for b in blocks)
    assert blocks[1].value == b"vdev firmware image"


def test_no_measurements_capability(p384_identity: DeviceIdentity) -> None:
    from spdm.codes import RspCap
    from spdm.errors import ErrorResponse
    from spdm.responder import DEFAULT_RSP_CAPS

    caps = int(DEFAULT_RSP_CAPS & ~(RspCap.MEAS_SIG | RspCap.MEAS_FRESH))
    link = make_link(p384_identity, rsp={"capabilities": caps})
    link.connect()
    assert link.requester.algorithms.meas_hash == 0
    try:
        link.run(link.requester.get_measurements())
    except ErrorResponse as exc:
        assert exc.code == 0x07
    else:  # pragma: no cover
        raise AssertionError("expected UnsupportedRequest")
