"""Requests built by hand and responses read by hand, from DSP0274's message tables.

Nothing here uses the product's message declarations (`spdm.messages`): offsets and
sizes are transcribed from the specification so that a mistake in our encoder cannot
hide behind the same mistake in the test.  Where the table is cited by number it is
DSP0274 1.3.0's numbering; the 1.0/1.1/1.2 layouts are the same tables' earlier
editions and are named by version.  The DSP0274 PDFs themselves are not readable
here; the layouts were checked against the public libspdm header
`include/industry_standard/spdm.h` and the DMTF SPDM-Responder-Validator's test
design (`doc/*.md`), facts only.

A `Conn` is one connection to a device built from a shipped profile, as
`vdev serve --profile NAME` builds it, with our requester beside it for the steps a
test does not judge (a session's handshake, for instance).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spdm.requester import Outgoing, Requester, RequesterConfig
from vdev.doe.data_object import DOE_TYPE_CMA_SPDM
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import DeviceProfile, load_profile, shipped_profiles

V10, V11, V12, V13, V14 = 0x10, 0x11, 0x12, 0x13, 0x14
#: DSP0274 1.0-1.3 are what this suite transcribes (1.4 has its own tests in
#: tests/spdm/test_spdm14.py); a profile is judged in every one of these it offers.
JUDGED = (V10, V11, V12, V13)

# ---- request and response codes (DSP0274 1.3 Table 4 / Table 5) -------------------------
GET_DIGESTS, GET_CERTIFICATE, CHALLENGE, GET_VERSION = 0x81, 0x82, 0x83, 0x84
CHUNK_SEND, CHUNK_GET, GET_ENDPOINT_INFO = 0x85, 0x86, 0x87
GET_MEASUREMENTS, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS = 0xE0, 0xE1, 0xE3
KEY_EXCHANGE, FINISH, PSK_EXCHANGE, PSK_FINISH = 0xE4, 0xE5, 0xE6, 0xE7
HEARTBEAT, KEY_UPDATE, GET_ENCAPSULATED_REQUEST = 0xE8, 0xE9, 0xEA
DELIVER_ENCAPSULATED_RESPONSE, END_SESSION = 0xEB, 0xEC
GET_CSR, SET_CERTIFICATE, GET_MEASUREMENT_EXTENSION_LOG = 0xED, 0xEE, 0xEF
GET_SUPPORTED_EVENT_TYPES, SUBSCRIBE_EVENT_TYPES, SEND_EVENT = 0xE2, 0xF0, 0xF1
GET_KEY_PAIR_INFO, SET_KEY_PAIR_INFO, VENDOR_DEFINED_REQUEST = 0xFC, 0xFD, 0xFE
RESPOND_IF_READY = 0xFF
ERROR = 0x7F

# ---- ERROR codes (DSP0274 1.3 Table 58 / §10.12) -------------------------------------
INVALID_REQUEST, INVALID_SESSION, BUSY, UNEXPECTED_REQUEST = 0x01, 0x02, 0x03, 0x04
DECRYPT_ERROR, UNSUPPORTED_REQUEST = 0x06, 0x07
SESSION_REQUIRED, REQUEST_TOO_LARGE = 0x0B, 0x0E
VERSION_MISMATCH = 0x41

# ---- CAPABILITIES Flags (DSP0274 1.3 Table 14, Responder flag fields) -----------------
CACHE, CERT, CHAL = 1 << 0, 1 << 1, 1 << 2
MEAS_MASK, MEAS_NO_SIG, MEAS_SIG, MEAS_FRESH = 3 << 3, 1 << 3, 2 << 3, 1 << 5
ENCRYPT, MAC, MUT_AUTH, KEY_EX = 1 << 6, 1 << 7, 1 << 8, 1 << 9
PSK_MASK, PSK_NO_CONTEXT, PSK_WITH_CONTEXT = 3 << 10, 1 << 10, 2 << 10
ENCAP, HBEAT, KEY_UPD, HANDSHAKE_IN_THE_CLEAR = 1 << 12, 1 << 13, 1 << 14, 1 << 15
PUB_KEY_ID, CHUNK, ALIAS_CERT, SET_CERT = 1 << 16, 1 << 17, 1 << 18, 1 << 19
CSR, CERT_INSTALL_RESET = 1 << 20, 1 << 21
EP_INFO_MASK, EP_INFO_NO_SIG, EP_INFO_SIG = 3 << 22, 1 << 22, 2 << 22
MEL, EVENT = 1 << 24, 1 << 25
MULTI_KEY_MASK, MULTI_KEY_ONLY, MULTI_KEY_NEG = 3 << 26, 1 << 26, 2 << 26
GET_KEY_PAIR_INFO_CAP, SET_KEY_PAIR_INFO_CAP, SET_KEY_PAIR_RESET = 1 << 28, 1 << 29, 1 << 30

#: The flag bits each version defines; the others are Reserved (DSP0274 1.0 Table 12
#: bits 5:0; 1.1 adds bits 16:6; 1.2 adds bits 21:17; 1.3 Table 14 adds bits 30:22).
DEFINED_FLAGS = {V10: 0x0000_003F, V11: 0x0001_FFFF, V12: 0x003F_FFFF, V13: 0x7FFF_FFFF}

#: What our requester side of a hand-built GET_CAPABILITIES claims (DSP0274 1.3 Table 13;
#: a legal combination in every version from 1.1): CERT, CHAL, ENCRYPT, MAC, KEY_EX,
#: PSK (01b), HBEAT, KEY_UPD, and CHUNK from 1.2.
REQ_FLAGS = CERT | CHAL | ENCRYPT | MAC | KEY_EX | PSK_NO_CONTEXT | HBEAT | KEY_UPD
REQ_DTS = 4096
REQ_MAX = 65536

# ---- algorithm bits (DSP0274 1.3 Table 15 / Table 16 / Tables 17-20) ------------------
#: BaseAsymAlgo bit -> signature size in bytes (bit 9 SM2, 10 Ed25519, 11 Ed448 from 1.2).
ASYM_SIG_SIZE = {0: 256, 1: 256, 2: 384, 3: 384, 4: 64, 5: 512, 6: 512, 7: 96, 8: 132,
                 9: 64, 10: 64, 11: 114}
#: BaseHashAlgo bit -> hash size (bit 6 SM3_256 from 1.2).
HASH_SIZE = {0: 32, 1: 48, 2: 64, 3: 32, 4: 48, 5: 64, 6: 32}
#: MeasurementHashAlgo bit -> size (bit 0 raw bit stream only: no digest).
MEAS_HASH_SIZE = {0: 0, 1: 32, 2: 48, 3: 64, 4: 32, 5: 48, 6: 64, 7: 32}
#: DHE Named Group bit -> ExchangeData size (ffdhe2048/3072/4096, secp256r1/384r1/521r1,
#: SM2 from 1.2).
DHE_SIZE = {0: 256, 1: 384, 2: 512, 3: 64, 4: 96, 5: 132, 6: 64}
ALG_DHE, ALG_AEAD, ALG_REQ_ASYM, ALG_KEY_SCHEDULE = 2, 3, 4, 5
OFFER_ASYM_10 = 0x01FF          # the nine 1.0/1.1 algorithms
OFFER_ASYM_12 = 0x0FFF          # ... plus SM2, EdDSA 25519/448
OFFER_HASH_10 = 0x3F
OFFER_HASH_12 = 0x7F
OFFER_DHE = 0x3F                # ffdhe2048..secp521r1
OFFER_AEAD = 0x07               # AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305
OFFER_REQ_ASYM = 0x01FF
OFFER_KEY_SCHEDULE = 0x0001     # SPDM key schedule
DMTF = 0x01                     # MeasurementSpecification / MELspecification
OPAQUE_FMT1 = 0x02              # OtherParamsSupport bit 1 (1.2+)
OPAQUE_FMT_MASK = 0x0F


def bits(value: int) -> list[int]:
    return [i for i in range(value.bit_length()) if value >> i & 1]


def one_bit(value: int) -> bool:
    return value != 0 and value & (value - 1) == 0


# ---- ERROR ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Err:
    """ERROR response (DSP0274 1.3 Table 57): SPDMVersion, 0x7F, Param1 = ErrorCode,
    Param2 = ErrorData, then ExtendedErrorData."""

    version: int
    code: int
    data: int
    extended: bytes


def parse_error(resp: bytes) -> Err:
    assert len(resp) >= 4, resp.hex()
    assert resp[1] == ERROR, f"expected ERROR, got {resp.hex()}"
    return Err(resp[0], resp[2], resp[3], resp[4:])


# ---- builders -----------------------------------------------------------------------------

def get_version() -> bytes:
    """DSP0274 1.3 Table 8: SPDMVersion 0x10 always, Param1/Param2 Reserved."""
    return bytes([V10, GET_VERSION, 0, 0])


def get_capabilities(version: int, flags: int = REQ_FLAGS, *, ct_exponent: int = 12,
                     dts: int = REQ_DTS, max_size: int = REQ_MAX, param1: int = 0) -> bytes:
    """DSP0274 1.3 Table 11: header; from 1.1 Reserved, CTExponent, Reserved u16, Flags
    u32; from 1.2 DataTransferSize u32, MaxSPDMmsgSize u32.  A 1.0 request is the header."""
    msg = bytes([version, GET_CAPABILITIES, param1, 0])
    if version >= V11:
        if version >= V12:
            flags |= CHUNK
        msg += struct.pack("<BBHI", 0, ct_exponent, 0, flags)
    if version >= V12:
        msg += struct.pack("<II", dts, max_size)
    return msg


def alg_struct(alg_type: int, supported: int, fixed: int = 2) -> bytes:
    """DSP0274 1.3 Table 17: AlgType, AlgCount (bits 7:4 fixed width 2, bits 3:0 number
    of external algorithms), AlgSupported u16."""
    return struct.pack("<BBH", alg_type, fixed << 4, supported)


def default_structs() -> list[bytes]:
    return [alg_struct(ALG_DHE, OFFER_DHE), alg_struct(ALG_AEAD, OFFER_AEAD),
            alg_struct(ALG_REQ_ASYM, OFFER_REQ_ASYM),
            alg_struct(ALG_KEY_SCHEDULE, OFFER_KEY_SCHEDULE)]


def negotiate_algorithms(version: int, *, structs: list[bytes] | None = None,
                         length: int | None = None, base_asym: int | None = None,
                         base_hash: int | None = None, ext_asym: int = 0,
                         meas_spec: int = DMTF) -> bytes:
    """DSP0274 1.3 Table 15: header (Param1 = number of AlgStructs from 1.1), Length
    u16, MeasurementSpecification, OtherParamsSupport (1.2+), BaseAsymAlgo u32,
    BaseHashAlgo u32, Reserved 12, ExtAsymCount, ExtHashCount, Reserved, MELspecification
    (1.3), ExtAsym (4 each), ExtHash, ReqAlgStruct."""
    if structs is None:
        structs = default_structs() if version >= V11 else []
    asym = base_asym if base_asym is not None else (
        OFFER_ASYM_12 if version >= V12 else OFFER_ASYM_10)
    hsh = base_hash if base_hash is not None else (
        OFFER_HASH_12 if version >= V12 else OFFER_HASH_10)
    other = OPAQUE_FMT1 if version >= V12 else 0
    mel = DMTF if version >= V13 else 0
    body = struct.pack("<BBII", meas_spec, other, asym, hsh) + bytes(12)
    body += struct.pack("<BBBB", ext_asym, 0, 0, mel)
    body += bytes(4 * ext_asym) + b"".join(structs)
    total = 6 + len(body)
    hdr = bytes([version, NEGOTIATE_ALGORITHMS, len(structs) if version >= V11 else 0, 0])
    return hdr + struct.pack("<H", total if length is None else length) + body


# ---- parsers ------------------------------------------------------------------------------

@dataclass
class Caps:
    version: int
    ct_exponent: int
    flags: int
    dts: int = 0
    max_size: int = 0


def parse_capabilities(resp: bytes) -> Caps:
    """DSP0274 1.3 Table 12: 12 bytes in 1.0 and 1.1 (Reserved, CTExponent, Reserved u16,
    Flags u32), 20 bytes from 1.2 (+ DataTransferSize, MaxSPDMmsgSize)."""
    version = resp[0]
    assert resp[1] == 0x61, resp.hex()
    want = 20 if version >= V12 else 12
    assert len(resp) == want, f"CAPABILITIES {version:#x} is {len(resp)} bytes, not {want}"
    assert resp[2:4] == b"\0\0", "Param1/Param2 Reserved"
    assert resp[4] == 0 and resp[6:8] == b"\0\0", "Reserved bytes"
    caps = Caps(version, resp[5], struct.unpack_from("<I", resp, 8)[0])
    if version >= V12:
        caps.dts, caps.max_size = struct.unpack_from("<II", resp, 12)
    return caps


@dataclass
class Algs:
    version: int
    param1: int
    meas_spec: int
    other: int
    meas_hash: int
    base_asym: int
    base_hash: int
    mel_spec: int
    ext_asym_count: int
    ext_hash_count: int
    structs: list[tuple[int, int, int]] = field(default_factory=list)  # type, count, sel

    @property
    def h(self) -> int:
        return HASH_SIZE[bits(self.base_hash)[0]]

    @property
    def sig(self) -> int:
        return ASYM_SIG_SIZE[bits(self.base_asym)[0]] if self.base_asym else 0

    def selected(self, alg_type: int) -> int:
        return next((s for t, _, s in self.structs if t == alg_type), 0)


def parse_algorithms(resp: bytes) -> Algs:
    """DSP0274 1.3 Table 16: header (Param1 = number of AlgStructs), Length u16,
    MeasurementSpecificationSel, OtherParamsSelection (1.2+), MeasurementHashAlgo u32,
    BaseAsymSel u32, BaseHashSel u32, Reserved 11, MELspecificationSel (1.3),
    ExtAsymSelCount, ExtHashSelCount, Reserved u16, ExtAsymSel, ExtHashSel, RespAlgStruct."""
    assert resp[1] == 0x63, resp.hex()
    assert len(resp) >= 36, resp.hex()
    length = struct.unpack_from("<H", resp, 4)[0]
    assert length == len(resp), f"Length {length} != size {len(resp)}"
    meas_spec, other = resp[6], resp[7]
    meas_hash, asym, hsh = struct.unpack_from("<III", resp, 8)
    a = Algs(resp[0], resp[2], meas_spec, other, meas_hash, asym, hsh, resp[31],
             resp[32], resp[33])
    assert resp[20:31] == bytes(11), "Reserved"
    off = 36 + 4 * (a.ext_asym_count + a.ext_hash_count)
    for _ in range(a.param1):
        t, count, sel = struct.unpack_from("<BBH", resp, off)
        a.structs.append((t, count, sel))
        off += 4 + 4 * (count & 0x0F)
    assert off == len(resp), "AlgStructs do not fill the message"
    return a


# ---- a connection to a profile's device -----------------------------------------------

def profile_device(name: str, state_root: Path) -> TeeDevice:
    """A new device as `vdev serve --profile NAME` runs it (its identity in a state
    directory kept for the test session, so it is generated once)."""
    return TeeDevice(load_profile(name), state_dir=state_root / name)


def judged_cases() -> Iterator[tuple[str, int]]:
    """(profile, version) for every shipped profile and every DSP0274 1.0-1.3 version
    the profile offers."""
    for name in shipped_profiles():
        for version in load_profile(name).spdm_version_list:
            if version in JUDGED:
                yield name, version


def case_ids(cases: list[tuple[str, int]]) -> list[str]:
    return [f"{n}-{v >> 4}.{v & 0xF}" for n, v in cases]


class Conn:
    """One SPDM connection to a profile device, driven by hand-built requests."""

    def __init__(self, device: TeeDevice, version: int) -> None:
        self.device = device
        self.profile: DeviceProfile = device.profile
        self.version = version
        self.caps: Caps | None = None
        self.algs: Algs | None = None
        self.log: list[tuple[int, bytes, bytes]] = []
        self.req: Requester | None = None

    def send(self, msg: bytes) -> bytes:
        _type, reply = self.device.spdm_message(DOE_TYPE_CMA_SPDM, msg)
        return reply

    # Steps of VCA, each judged by the caller.
    def version_step(self) -> bytes:
        resp = self.send(get_version())
        assert resp[:2] == bytes([V10, 0x04]), resp.hex()
        return resp

    def capabilities_step(self, flags: int = REQ_FLAGS) -> Caps:
        self.version_step()
        self.caps = parse_capabilities(self.send(get_capabilities(self.version, flags)))
        return self.caps

    def vca(self, flags: int = REQ_FLAGS) -> Algs:
        self.capabilities_step(flags)
        self.algs = parse_algorithms(self.send(negotiate_algorithms(self.version)))
        return self.algs

    @property
    def flags(self) -> int:
        assert self.caps is not None
        return self.caps.flags

    # Our requester for the steps a test does not judge (it shares the device).
    def requester(self, **config: Any) -> Requester:
        device = self.device
        cfg: dict[str, Any] = {
            "versions": (self.version,),
            "trust_anchors": [device.identity.root],
            "psk": dict(self.profile.spdm_psk_table),
        }
        cfg.update(config)
        self.req = Requester(RequesterConfig(**cfg))
        return self.req

    def transport(self, out: Outgoing) -> bytes:
        _kind, reply = self.device.spdm_message(out.doe_type, out.data)
        self.log.append((out.doe_type, out.data, reply))
        return reply

    def run(self, op: Any) -> Any:
        assert self.req is not None
        return self.req.run(op, self.transport)

    def in_session(self, sid: int, msg: bytes) -> bytes:
        """`msg` sealed in session `sid`; the decrypted reply."""
        assert self.req is not None
        return self.run(self.req.raw(msg, sid))  # type: ignore[no-any-return]
