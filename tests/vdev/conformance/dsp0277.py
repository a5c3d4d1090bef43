"""Secured messages built and read by hand: DSP0277's record and DSP0274's key schedule,
with `cryptography`'s HMAC, HKDF-Expand and AEAD directly (nothing of `spdm.*`).

Record (DSP0277 1.x "Secured message format", PCI DOE binding: no SequenceNumber field
and no random padding, PCIe 6.x CMA; the sequence number is implicit, counted by each
side per direction and key):

    SessionID u32 | Length u16 | AEAD( ApplicationDataLength u16 | SPDM message ) | MAC 16

Length counts the cipher text and the MAC; the additional authenticated data is the
header, SessionID through Length.  The AEAD nonce is the direction's IV with the 64-bit
sequence number XORed into its first eight bytes, least significant byte first.

Key schedule (DSP0274 1.1-1.3 "Key schedule"; BinConcat(Length, Version, Label, Context)
= u16 Length || "spdm1.x " || Label || Context):

    HandshakeSecret = HKDF-Extract(Salt_0, DHE secret or PSK)
    {req,rsp} hs    = HKDF-Expand(HandshakeSecret, BinConcat(H, "req hs data"/"rsp hs data", TH1))
    MasterSecret    = HKDF-Extract(HKDF-Expand(HandshakeSecret, BinConcat(H, "derived")), 0^H)
    {req,rsp} app   = HKDF-Expand(MasterSecret, BinConcat(H, "req app data"/"rsp app data", TH2))
    key, iv         = HKDF-Expand(secret, BinConcat(key size, "key")), (12, "iv")
    finished_key    = HKDF-Expand(hs secret, BinConcat(H, "finished"))
    updated secret  = HKDF-Expand(app secret, BinConcat(H, "traffic upd"))

Salt_0 is 0^H, except for a PSK session from SPDM 1.3 on, where it is 0xFF^H (as libspdm,
DMTF's reference implementation, derives it).  TH1 / TH2 are the hashes of the
transcripts the caller assembles from the messages on the wire.
"""

from __future__ import annotations

import hmac as std_hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

#: BaseHashSel bit -> hash (DSP0274 1.3 Table 15: SHA-256, SHA-384, SHA-512).
HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    0x1: hashes.SHA256, 0x2: hashes.SHA384, 0x4: hashes.SHA512}
#: AEAD cipher suite AlgSupported bit -> key size (Table 19: AES-128-GCM, AES-256-GCM,
#: CHACHA20_POLY1305); every one has a 12-byte IV and a 16-byte MAC.
AEAD_KEY_SIZE = {0x1: 16, 0x2: 32, 0x4: 32}
IV_SIZE = 12
MAC_SIZE = 16
HEADER_SIZE = 6  # SessionID u32, Length u16


def digest(hash_bit: int, data: bytes) -> bytes:
    h = hashes.Hash(HASHES[hash_bit]())
    h.update(data)
    return h.finalize()


def hmac(hash_bit: int, key: bytes, data: bytes) -> bytes:
    name = HASHES[hash_bit].name
    return std_hmac.new(key, data, name).digest()


def bin_concat(version: int, length: int, label: bytes, context: bytes = b"") -> bytes:
    return struct.pack("<H", length) + f"spdm{version >> 4}.{version & 0xF} ".encode() \
        + label + context


@dataclass
class Direction:
    """One direction's traffic secret, key, IV and implicit sequence number."""

    secret: bytes
    key: bytes
    iv: bytes
    seq: int = 0

    def nonce(self, seq: int) -> bytes:
        iv = bytearray(self.iv)
        for i, b in enumerate(seq.to_bytes(8, "little")):
            iv[i] ^= b
        return bytes(iv)


class KeySchedule:
    def __init__(self, version: int, hash_bit: int, aead_bit: int, shared: bytes, *,
                 psk: bool) -> None:
        self.version, self.hash_bit, self.aead_bit = version, hash_bit, aead_bit
        self.h = HASHES[hash_bit].digest_size
        salt0 = (b"\xff" if psk and version >= 0x13 else b"\x00") * self.h
        self.handshake_secret = hmac(hash_bit, salt0, shared)  # HKDF-Extract

    def expand(self, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
        return HKDFExpand(HASHES[self.hash_bit](), length,
                          bin_concat(self.version, length, label, context)).derive(secret)

    def direction(self, secret: bytes) -> Direction:
        return Direction(secret, self.expand(secret, b"key", b"",
                                             AEAD_KEY_SIZE[self.aead_bit]),
                         self.expand(secret, b"iv", b"", IV_SIZE))

    def handshake(self, th1: bytes) -> tuple[Direction, Direction]:
        return (self.direction(self.expand(self.handshake_secret, b"req hs data", th1, self.h)),
                self.direction(self.expand(self.handshake_secret, b"rsp hs data", th1, self.h)))

    def finished_key(self, d: Direction) -> bytes:
        return self.expand(d.secret, b"finished", b"", self.h)

    def application(self, th2: bytes) -> tuple[Direction, Direction]:
        salt1 = self.expand(self.handshake_secret, b"derived", b"", self.h)
        master = hmac(self.hash_bit, salt1, bytes(self.h))
        return (self.direction(self.expand(master, b"req app data", th2, self.h)),
                self.direction(self.expand(master, b"rsp app data", th2, self.h)))

    def updated(self, d: Direction) -> Direction:
        """DSP0274 KEY_UPDATE: the next secret of a direction; its sequence number
        starts again at 0."""
        return self.direction(self.expand(d.secret, b"traffic upd", b"", self.h))


def _aead(aead_bit: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return ChaCha20Poly1305(key) if aead_bit == 0x4 else AESGCM(key)


def seal(aead_bit: int, d: Direction, session_id: int, message: bytes, *,
         seq: int | None = None) -> bytes:
    """A record of `message` under `d` at its next sequence number (or `seq`, which then
    does not advance the counter)."""
    n = d.seq if seq is None else seq
    plain = struct.pack("<H", len(message)) + message
    header = struct.pack("<IH", session_id, len(plain) + MAC_SIZE)
    record = header + _aead(aead_bit, d.key).encrypt(d.nonce(n), plain, header)
    if seq is None:
        d.seq += 1
    return record


def open_record(aead_bit: int, d: Direction, session_id: int, record: bytes) -> bytes:
    """The SPDM message of a record under `d` at its next sequence number; the layout is
    checked on the way (SessionID, Length, ApplicationDataLength, no padding)."""
    sid, length = struct.unpack_from("<IH", record)
    assert sid == session_id, f"SessionID {sid:#x}, expected {session_id:#x}"
    body = record[HEADER_SIZE:]
    # DOE carries the record in whole DWORDs: at most 3 zero bytes after Length.
    assert length <= len(body) and len(body) - length < 4 and not any(body[length:]), \
        f"Length {length} for {len(body)} bytes after the header"
    plain = _aead(aead_bit, d.key).decrypt(d.nonce(d.seq), body[:length],
                                            record[:HEADER_SIZE])
    d.seq += 1
    app_length = struct.unpack_from("<H", plain)[0]
    assert app_length == len(plain) - 2, "no random padding over PCI DOE"
    return plain[2:]
