"""Which SPDMVersion an ERROR carries, and the 1.0 MEASUREMENTS Nonce: exact bytes,
built by hand from DSP0274's tables rather than with our own encoder.

DSP0274 "GET_VERSION": the ERROR to an invalid GET_VERSION has SPDMVersion 0x10.  The
version a Requester selects is the one in the request after GET_VERSION: a
GET_CAPABILITIES in a supported version whose fields are invalid is refused in that
version; only an unsupported version gets VersionMismatch, necessarily in 1.0.
"""

from __future__ import annotations

import struct

import pytest

from spdm.identity import DeviceIdentity
from spdm.responder import Responder
from tests.helpers.spdm_harness import make_link

GET_VERSION = bytes([0x10, 0x84, 0x00, 0x00])

# Requester flag bits (DSP0274 1.3 Table 13).
CERT, CHAL, ENCRYPT, MAC = 1 << 1, 1 << 2, 1 << 6, 1 << 7
MUT_AUTH, KEY_EX, PSK, ENCAP = 1 << 8, 1 << 9, 1 << 10, 1 << 12
HBEAT, KEY_UPD, CHUNK = 1 << 13, 1 << 14, 1 << 17
GOOD = CERT | CHAL | ENCRYPT | MAC | KEY_EX | HBEAT | KEY_UPD


def get_capabilities(version: int, flags: int, dts: int = 4096, max_size: int = 4096,
                     param1: int = 0, ct_exponent: int = 10) -> bytes:
    """Table 11: header, Reserved, CTExponent, Reserved u16, Flags u32 (1.1+),
    DataTransferSize u32, MaxSPDMmsgSize u32 (1.2+)."""
    msg = bytes([version, 0xE1, param1, 0x00])
    if version >= 0x11:
        msg += struct.pack("<BBHI", 0, ct_exponent, 0, flags)
    if version >= 0x12:
        msg += struct.pack("<II", dts, max_size)
    return msg


def fresh(identity: DeviceIdentity) -> Responder:
    rsp = make_link(identity).responder
    version = rsp.handle(GET_VERSION)
    assert version[:2] == bytes([0x10, 0x04])
    return rsp


INVALID_CAPABILITIES = [
    # (name, version, flags, dts, max, param1)
    ("KEY_EX without ENCRYPT or MAC", 0x12, CERT | CHAL | KEY_EX, 4096, 4096, 0),
    ("PSK without ENCRYPT or MAC", 0x12, CERT | CHAL | PSK, 4096, 4096, 0),
    ("ENCRYPT and MAC without KEY_EX or PSK", 0x12, CERT | CHAL | ENCRYPT | MAC, 4096, 4096, 0),
    ("HBEAT without KEY_EX or PSK", 0x12, CERT | CHAL | HBEAT, 4096, 4096, 0),
    ("PSK_CAP 10b is reserved for a Requester", 0x12, GOOD | (2 << 10), 4096, 4096, 0),
    ("DataTransferSize 41 < MinDataTransferSize 42", 0x12, GOOD, 41, 41, 0),
    ("DataTransferSize > MaxSPDMmsgSize", 0x12, GOOD | CHUNK, 4097, 4096, 0),
    ("DataTransferSize != MaxSPDMmsgSize without CHUNK_CAP", 0x12, GOOD, 1024, 4096, 0),
    ("1.1: MUT_AUTH without ENCAP", 0x11, GOOD | MUT_AUTH, 0, 0, 0),
    ("1.1: KEY_EX without ENCRYPT or MAC", 0x11, CERT | KEY_EX, 0, 0, 0),
    ("1.3: KEY_EX without ENCRYPT or MAC", 0x13, CERT | CHAL | KEY_EX, 4096, 4096, 0),
    ("1.3: Param1 bit 0 without CHUNK_CAP", 0x13, GOOD, 4096, 4096, 1),
]


@pytest.mark.parametrize(("name", "version", "flags", "dts", "max_size", "param1"),
                         INVALID_CAPABILITIES, ids=[c[0] for c in INVALID_CAPABILITIES])
def test_invalid_get_capabilities_error_carries_the_selected_version(
        p384_identity: DeviceIdentity, name: str, version: int, flags: int, dts: int,
        max_size: int, param1: int) -> None:
    rsp = fresh(p384_identity)
    resp = rsp.handle(get_capabilities(version, flags, dts, max_size, param1))
    # ERROR (Table 57): SPDMVersion, 0x7F, Param1 = InvalidRequest (0x01), Param2 = 0.
    assert resp == bytes([version, 0x7F, 0x01, 0x00])
    # The refusal changed nothing: the same GET_CAPABILITIES with valid fields works.
    ok = rsp.handle(get_capabilities(version, GOOD, 4096, 4096))
    assert ok[:2] == bytes([version, 0x61])


def test_mut_auth_without_encap_is_legal_from_1_2(p384_identity: DeviceIdentity) -> None:
    # The ENCAP_CAP requirement belongs to 1.1; 1.2 and 1.3 Table 13 drop it.
    rsp = fresh(p384_identity)
    resp = rsp.handle(get_capabilities(0x12, GOOD | MUT_AUTH))
    assert resp[:2] == bytes([0x12, 0x61])


@pytest.mark.parametrize("bad", [0x15, 0x20, 0x0F, 0x00])
def test_unsupported_version_is_version_mismatch_in_1_0(p384_identity: DeviceIdentity,
                                                        bad: int) -> None:
    rsp = fresh(p384_identity)
    assert rsp.handle(get_capabilities(bad, GOOD)) == bytes([0x10, 0x7F, 0x41, 0x00])


def test_get_version_not_1_0_is_version_mismatch_in_1_0(p384_identity: DeviceIdentity) -> None:
    rsp = fresh(p384_identity)
    assert rsp.handle(bytes([0x11, 0x84, 0, 0])) == bytes([0x10, 0x7F, 0x41, 0x00])


def test_after_capabilities_errors_carry_the_negotiated_version(
        p384_identity: DeviceIdentity) -> None:
    rsp = fresh(p384_identity)
    assert rsp.handle(get_capabilities(0x12, GOOD))[:2] == bytes([0x12, 0x61])
    # GET_DIGESTS before NEGOTIATE_ALGORITHMS: UnexpectedRequest in the selected version.
    assert rsp.handle(bytes([0x12, 0x81, 0, 0])) == bytes([0x12, 0x7F, 0x04, 0x00])
    # Another version than the selected one: VersionMismatch, in the selected version.
    assert rsp.handle(bytes([0x13, 0x81, 0, 0])) == bytes([0x12, 0x7F, 0x41, 0x00])


def test_request_before_version_selected_is_unexpected_in_1_0(
        p384_identity: DeviceIdentity) -> None:
    rsp = fresh(p384_identity)
    assert rsp.handle(bytes([0x12, 0xE3, 0, 0]) + bytes(28)) == bytes([0x10, 0x7F, 0x04, 0x00])


def _negotiate_10(rsp: Responder) -> None:
    assert rsp.handle(get_capabilities(0x10, 0))[:2] == bytes([0x10, 0x61])
    # NEGOTIATE_ALGORITHMS 1.0 (Table 15 without AlgStructs): Length 32, DMTF measurement
    # spec, ECDSA P-384 (bit 7), SHA-384 (bit 1).
    na = struct.pack("<BBBBHBBII12sBBH", 0x10, 0xE3, 0, 0, 32, 0x01, 0, 1 << 7, 1 << 1,
                     bytes(12), 0, 0, 0)
    assert rsp.handle(na)[:2] == bytes([0x10, 0x63])


@pytest.mark.parametrize("signed", [False, True])
def test_spdm_1_0_measurements_carry_the_nonce(p384_identity: DeviceIdentity,
                                               signed: bool) -> None:
    """DSP0274 1.0 "Successful MEASUREMENTS response": NumberOfBlocks, MeasurementRecord-
    Length (3 bytes), MeasurementRecord, Nonce (32, no condition), OpaqueLength (2),
    OpaqueData, Signature (only when requested)."""
    randoms: list[bytes] = []

    def random(n: int) -> bytes:
        out = bytes([len(randoms) + 1]) * n
        randoms.append(out)
        return out

    link = make_link(p384_identity, rsp={"versions": (0x10,), "random": random})
    rsp = link.responder
    assert rsp.handle(GET_VERSION)[6:8] == bytes([0x00, 0x10])
    _negotiate_10(rsp)
    # 1.0 GET_MEASUREMENTS: with a signature, header + Nonce (no SlotIDParam before
    # 1.1); without, the header only.
    signed_req = bytes([0x10, 0xE0, 0x01, 0x01]) + bytes(range(32))
    resp = rsp.handle(signed_req if signed else bytes([0x10, 0xE0, 0x00, 0x01]))
    assert resp[:2] == bytes([0x10, 0x60])
    assert resp[4] == 1  # NumberOfBlocks: index 1 only
    record_length = int.from_bytes(resp[5:8], "little")
    end = 8 + record_length
    assert resp[end:end + 32] == randoms[-1]  # the responder's nonce
    opaque_length = int.from_bytes(resp[end + 32:end + 34], "little")
    assert opaque_length == 0
    signature = resp[end + 34 + opaque_length:]
    assert len(signature) == (96 if signed else 0)
