"""GET_DIGESTS, GET_CERTIFICATE, CHALLENGE and GET_MEASUREMENTS on every shipped profile
in every DSP0274 1.0-1.3 version it offers: success responses read field by field from
DSP0274's tables, and the ERROR each malformed or misplaced request must get."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vdev.conformance import wire as w

CASES = list(w.judged_cases())
IDS = w.case_ids(CASES)
NONCE = bytes(range(32))
CONTEXT = b"ctx-8byt"

_HASHES = {0: hashlib.sha256, 1: hashlib.sha384, 2: hashlib.sha512, 3: hashlib.sha3_256,
           4: hashlib.sha3_384, 5: hashlib.sha3_512}


def digest(a: w.Algs, data: bytes) -> bytes:
    return _HASHES[w.bits(a.base_hash)[0]](data).digest()


def connected(state_root: Path, profile: str, version: int) -> w.Conn:
    c = w.Conn(w.profile_device(profile, state_root), version)
    c.vca()
    return c


# ---- builders (DSP0274 1.3 §10.6-§10.11) ------------------------------------------------

def get_digests(v: int) -> bytes:
    """Table 22: header only, Param1/Param2 Reserved."""
    return bytes([v, w.GET_DIGESTS, 0, 0])


def get_certificate(v: int, slot: int, offset: int = 0, length: int = 0x400,
                    param2: int = 0) -> bytes:
    """Table 26: Param1 bits 3:0 SlotID, Param2 (1.3 bit 0 SlotSizeRequested), Offset
    u16, Length u16."""
    return bytes([v, w.GET_CERTIFICATE, slot, param2]) + struct.pack("<HH", offset, length)


def challenge(v: int, slot: int, summary: int = 0) -> bytes:
    """Table 33: Param1 SlotID, Param2 MeasurementSummaryHashType, Nonce 32,
    RequesterContext 8 (1.3)."""
    return bytes([v, w.CHALLENGE, slot, summary]) + NONCE + (CONTEXT if v >= w.V13 else b"")


def get_measurements(v: int, op: int, *, signed: bool = False, slot: int = 0) -> bytes:
    """Table 44: Param1 bit 0 SignatureRequested, Param2 MeasurementOperation; Nonce 32
    and SlotIDParam (1.1+) only when signed; RequesterContext 8 (1.3)."""
    msg = bytes([v, w.GET_MEASUREMENTS, 1 if signed else 0, op])
    if signed:
        msg += NONCE + (bytes([slot]) if v >= w.V11 else b"")
    return msg + (CONTEXT if v >= w.V13 else b"")


# ---- DIGESTS and CERTIFICATE (Tables 23, 27, 28) ---------------------------------------

def read_digests(c: w.Conn) -> tuple[int, list[bytes]]:
    a, v = c.algs, c.version
    assert a is not None
    resp = c.send(get_digests(v))
    assert resp[:2] == bytes([v, 0x01]), resp.hex()
    mask = resp[3]
    # Table 23: Param1 Reserved before 1.3, SupportedSlotMask in 1.3 (a superset of
    # Param2, ProvisionedSlotMask); one Digest of H bytes per provisioned slot.
    if v >= w.V13:
        assert resp[2] & mask == mask
    else:
        assert resp[2] == 0
    assert mask & 1, "slot 0 is always provisioned when CERT_CAP is set"
    n = bin(mask).count("1")
    assert len(resp) == 4 + a.h * n
    return mask, [resp[4 + i * a.h: 4 + (i + 1) * a.h] for i in range(n)]


def read_chain(c: w.Conn, slot: int) -> bytes:
    v, out = c.version, b""
    while True:
        resp = c.send(get_certificate(v, slot, len(out), 0x200))
        assert resp[:3] == bytes([v, 0x02, slot]), resp.hex()
        # Param2: CertificateInfo on a 1.3 multi-key connection only, else Reserved.
        assert resp[3] == 0
        portion, remainder = struct.unpack_from("<HH", resp, 4)
        assert 0 < portion <= 0x200 and len(resp) == 8 + portion
        out += resp[8:]
        if remainder == 0:
            return out


def der_length(data: bytes) -> int:
    """Size of the DER element at the start of `data` (a certificate's SEQUENCE)."""
    assert data[0] == 0x30
    first = data[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    return 2 + n + int.from_bytes(data[2:2 + n], "big")


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_digests_and_certificates(state_root: Path, profile: str, version: int) -> None:
    c = connected(state_root, profile, version)
    if not c.flags & w.CERT:
        pytest.skip("CERT_CAP is 0 (the refusal is test_not_advertised_is_unsupported)")
    a = c.algs
    assert a is not None
    mask, digests = read_digests(c)
    for i, slot in enumerate(w.bits(mask)):
        chain = read_chain(c, slot)
        # Table 28 (certificate chain format): Length u16 of the whole chain, Reserved
        # u16, RootHash (H bytes) of the first certificate, then the DER certificates.
        length = struct.unpack_from("<H", chain)[0]
        assert length == len(chain) and chain[2:4] == b"\0\0"
        certs = chain[4 + a.h:]
        assert chain[4:4 + a.h] == digest(a, certs[:der_length(certs)])
        walked = 0
        while walked < len(certs):
            walked += der_length(certs[walked:])
        assert walked == len(certs), "certificates fill the chain exactly"
        # DIGESTS names each slot's chain by its hash.
        assert digests[i] == digest(a, chain)
    if version >= w.V13:
        # 1.3 Table 26 Param2 bit 0 SlotSizeRequested: no portion, RemainderLength is
        # the chain's size, Offset and Length ignored.
        resp = c.send(get_certificate(version, 0, 0xFFFF, 0xAA55, param2=1))
        portion, remainder = struct.unpack_from("<HH", resp, 4)
        assert resp[:3] == bytes([version, 0x02, 0]) and portion == 0 and len(resp) == 8
        assert remainder == len(read_chain(c, 0))


# ---- CHALLENGE_AUTH (Table 34) -----------------------------------------------------------

@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_challenge_auth(state_root: Path, profile: str, version: int) -> None:
    c = connected(state_root, profile, version)
    if not c.flags & w.CHAL:
        pytest.skip("CHAL_CAP is 0")
    a = c.algs
    assert a is not None
    mask, _ = read_digests(c)
    chains = {s: read_chain(c, s) for s in w.bits(mask)}
    summaries = [0x00, 0x01, 0xFF] if c.flags & w.MEAS_MASK else [0x00]
    for slot in w.bits(mask):
        for summary in summaries:
            resp = c.send(challenge(version, slot, summary))
            assert resp[:2] == bytes([version, 0x03]), resp.hex()
            # Param1 bits 3:0 SlotID (bits 7:4 Reserved, bit 7 BasicMutAuthReq in 1.1
            # only, never asked here); Param2 SlotMask.
            assert resp[2] == slot and resp[3] == mask
            off = 4
            assert resp[off:off + a.h] == digest(a, chains[slot])  # CertChainHash
            off += a.h + 32  # Nonce
            off += a.h if summary else 0  # MeasurementSummaryHash
            opaque = struct.unpack_from("<H", resp, off)[0]
            assert opaque <= 1024
            off += 2 + opaque
            if version >= w.V13:
                assert resp[off:off + 8] == CONTEXT  # RequesterContext echoed
                off += 8
            assert len(resp) == off + a.sig, "Signature is SigLen bytes of BaseAsymSel"


# ---- MEASUREMENTS (Table 45, Tables 47-49) ------------------------------------------

def parse_measurements(c: w.Conn, resp: bytes, signed: bool) -> tuple[int, bytes, list[bytes]]:
    a, v = c.algs, c.version
    assert a is not None
    assert resp[:2] == bytes([v, 0x60]), resp.hex()
    blocks_n = resp[4]
    rec_len = int.from_bytes(resp[5:8], "little")
    record = resp[8:8 + rec_len]
    off = 8 + rec_len
    off += 32  # Nonce: unconditional in every version's table
    opaque = struct.unpack_from("<H", resp, off)[0]
    assert opaque <= 1024
    off += 2 + opaque
    if v >= w.V13:
        assert resp[off:off + 8] == CONTEXT
        off += 8
    assert len(resp) == off + (a.sig if signed else 0)
    # Measurement blocks (Table 47): Index, MeasurementSpecification (bit 0 DMTF),
    # MeasurementSize u16, Measurement; DMTF format (Table 48): Type, ValueSize u16,
    # Value; a digest (Type bit 7 = 0) is MeasurementHashAlgo's size.
    blocks, pos = [], 0
    meas_size = w.MEAS_HASH_SIZE[w.bits(a.meas_hash)[0]]
    while pos < len(record):
        index, spec, size = struct.unpack_from("<BBH", record, pos)
        block = record[pos:pos + 4 + size]
        assert spec == w.DMTF and index not in (0x00, 0xFF)
        kind, value_size = struct.unpack_from("<BH", block, 4)
        assert size == 3 + value_size and len(block) == 4 + size
        if not kind & 0x80:
            assert value_size == meas_size
        if v >= w.V12 and kind & 0x7F == 0x05:
            assert kind & 0x80, "device mode is a raw bit stream from 1.2 (Table 49)"
        blocks.append(block)
        pos += 4 + size
    assert pos == len(record) and len(blocks) == blocks_n
    return resp[2], record, blocks


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_measurements(state_root: Path, profile: str, version: int) -> None:
    c = connected(state_root, profile, version)
    meas = c.flags & w.MEAS_MASK
    if not meas:
        pytest.skip("MEAS_CAP is 0")
    signed = meas == w.MEAS_SIG
    # Param2 0: Param1 is the number of measurement indices, no blocks.
    resp = c.send(get_measurements(version, 0, signed=signed))
    count, record, _ = parse_measurements(c, resp, signed)
    assert count > 0 and record == b""
    if signed:
        assert resp[3] & 0x0F == 0  # Param2 bits 3:0 SlotIDParam echoed
    # Param2 0xFF: every block, Param1 Reserved.
    resp = c.send(get_measurements(version, 0xFF, signed=signed))
    param1, _, blocks = parse_measurements(c, resp, signed)
    assert param1 == 0 and len(blocks) == count
    indices = [b[0] for b in blocks]
    assert indices == sorted(set(indices))
    # One index: NumberOfBlocks 1, the block with that index.
    for block in blocks:
        resp = c.send(get_measurements(version, block[0]))
        _, _, one = parse_measurements(c, resp, False)
        assert [b[0] for b in one] == [block[0]]


# ---- ERRORs ------------------------------------------------------------------------------

# Requests with what must gate them: (name, request(version), Responder flag).
GATED: list[tuple[str, Callable[[int], bytes], int]] = [
    ("GET_DIGESTS", get_digests, w.CERT),
    ("GET_CERTIFICATE", lambda v: get_certificate(v, 0), w.CERT),
    ("CHALLENGE", lambda v: challenge(v, 0), w.CHAL),
    ("GET_MEASUREMENTS", lambda v: get_measurements(v, 0), w.MEAS_MASK),
]
GATED_IDS = [g[0] for g in GATED]


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
@pytest.mark.parametrize(("name", "build", "flag"), GATED, ids=GATED_IDS)
def test_before_negotiate_algorithms_is_unexpected(
        state_root: Path, profile: str, version: int, name: str,
        build: Callable[[int], bytes], flag: int) -> None:
    """§10.5 / §9 (ordering): these follow ALGORITHMS; earlier is UnexpectedRequest in
    the version GET_CAPABILITIES selected (Responder-Validator cases 4.3, 5.3, 6.3)."""
    c = w.Conn(w.profile_device(profile, state_root), version)
    c.capabilities_step()
    if not c.flags & flag:
        pytest.skip("not advertised")
    err = w.parse_error(c.send(build(version)))
    assert (err.version, err.code, err.data) == (version, w.UNEXPECTED_REQUEST, 0)


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
@pytest.mark.parametrize(("name", "build", "flag"), GATED, ids=GATED_IDS)
def test_wrong_version_is_version_mismatch(
        state_root: Path, profile: str, version: int, name: str,
        build: Callable[[int], bytes], flag: int) -> None:
    """§10.12 Table 58 VersionMismatch: a request in another version than the
    negotiated one, answered in the negotiated version with ErrorData 0."""
    c = connected(state_root, profile, version)
    for other in (version + 1, version - 1):
        msg = bytearray(build(version))
        msg[0] = other
        err = w.parse_error(c.send(bytes(msg)))
        assert (err.version, err.code, err.data) == (version, w.VERSION_MISMATCH, 0)


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
@pytest.mark.parametrize(("name", "build", "flag"), GATED, ids=GATED_IDS)
def test_not_advertised_is_unsupported(
        state_root: Path, profile: str, version: int, name: str,
        build: Callable[[int], bytes], flag: int) -> None:
    """Table 58 UnsupportedRequest, ErrorData = the request code, for a request whose
    capability this connection was not given."""
    c = connected(state_root, profile, version)
    if c.flags & flag:
        pytest.skip("advertised")
    msg = build(version)
    err = w.parse_error(c.send(msg))
    assert (err.version, err.code, err.data) == (version, w.UNSUPPORTED_REQUEST, msg[1])


def _invalid_rows(c: w.Conn) -> list[tuple[str, bytes]]:
    """Malformed requests for what this connection advertises, each InvalidRequest."""
    v, f = c.version, c.flags
    rows: list[tuple[str, bytes]] = []
    mask = read_digests(c)[0] if f & w.CERT else 0
    empty = [s for s in range(8) if not mask >> s & 1]
    bad_slots = empty[:2] + [0x8, 0xE]
    if f & w.CERT:
        # Table 26: SlotID of a slot that is empty or out of 0-7; Offset past the chain;
        # the request cut short (Responder-Validator case 5.4).
        rows += [(f"GET_CERTIFICATE slot {s:#x}", get_certificate(v, s)) for s in bad_slots]
        rows += [("GET_CERTIFICATE Offset 0xFFFF", get_certificate(v, 0, 0xFFFF)),
                 ("GET_CERTIFICATE without Length", get_certificate(v, 0)[:6])]
    if f & w.CHAL:
        # Table 33: SlotID; MeasurementSummaryHashType other than 0x00, 0x01, 0xFF;
        # the Nonce cut short.
        rows += [(f"CHALLENGE slot {s:#x}", challenge(v, s)) for s in bad_slots]
        rows += [("CHALLENGE MeasurementSummaryHashType 0x02", challenge(v, 0, 0x02)),
                 ("CHALLENGE Nonce cut short", challenge(v, 0)[:20])]
    if f & w.MEAS_MASK:
        # Table 44: an index with no measurement (Responder-Validator case 7.4).
        c.send(get_digests(v)) if f & w.CERT else None
        resp = c.send(get_measurements(v, 0xFF))
        present = {b[0] for b in parse_measurements(c, resp, False)[2]}
        missing_index = next(i for i in range(1, 0xEF) if i not in present)
        rows.append((f"GET_MEASUREMENTS index {missing_index:#x}",
                     get_measurements(v, missing_index)))
        if f & w.MEAS_MASK == w.MEAS_SIG:
            rows.append(("GET_MEASUREMENTS signed, Nonce cut short",
                         get_measurements(v, 0xFF, signed=True)[:20]))
            if v >= w.V11:
                rows += [(f"GET_MEASUREMENTS signed by slot {s:#x}",
                          get_measurements(v, 0xFF, signed=True, slot=s)) for s in bad_slots]
        else:
            # Param1 bit 0 asks for a signature a MEAS_CAP 01b device cannot give.
            rows.append(("GET_MEASUREMENTS signed with MEAS_CAP 01b",
                         get_measurements(v, 0xFF, signed=True)))
    return rows


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_malformed_is_invalid_request(state_root: Path, profile: str, version: int) -> None:
    """Table 58 InvalidRequest, ErrorData 0, in the negotiated version; the connection
    survives each refusal (a valid request still works after it)."""
    c = connected(state_root, profile, version)
    rows = _invalid_rows(c)
    got = {}
    for name, msg in rows:
        resp = c.send(msg)
        err = w.parse_error(resp)
        got[name] = (err.version, err.code, err.data)
    assert got == {name: (version, w.INVALID_REQUEST, 0) for name, _ in rows}
    if c.flags & w.MEAS_MASK:
        assert c.send(get_measurements(version, 0))[1] == 0x60
