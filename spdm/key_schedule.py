"""SPDM key schedule (DSP0274 1.2 'Key schedule' clause; libspdm_crypt_key_schedule / secmes).

The class mirrors the spec's figure line by line:

    Salt_0           = 0^H
    HandshakeSecret  = HKDF-Extract(Salt_0, DHE secret | PSK)
    req/rsp hs secret= HKDF-Expand(HandshakeSecret, bin_concat(H, "req hs data"/"rsp hs data", TH1))
    Salt_1           = HKDF-Expand(HandshakeSecret, bin_concat(H, "derived"))
    MasterSecret     = HKDF-Extract(Salt_1, 0^H)
    req/rsp app sec. = HKDF-Expand(MasterSecret, bin_concat(H, "req app data"/"rsp app data", TH2))
    finished_key     = HKDF-Expand(hs secret, bin_concat(H, "finished"))
    key / iv         = HKDF-Expand(secret, bin_concat(keylen, "key")) / bin_concat(12, "iv")
    updated secret   = HKDF-Expand(app secret, bin_concat(H, "traffic upd"))

bin_concat(Length, Label, Context) = u16le(Length) || "spdm1.X " || Label || Context, where
"spdm1.X " uses the negotiated SPDMVersion (DSP0274 1.2 'Key schedule', BinConcat).
Secrets are never logged or included in reprs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from construct import Struct, this

from spdm import crypto
from spdm.algorithms import AEAD_IV_SIZE, AEAD_KEY_SIZE, HASH_SIZE
from spdm.compiled import Bytes, GreedyBytes, Int16ul, compiled

#: DSP0274 "Key schedule", BinConcat(Length, Version, Label, Context): the HKDF-Expand
#: info.  Length u16 is the output length; Version the 8-byte string "spdm1.x ".
BinConcat = Struct(
    "length" / Int16ul,
    "version" / Bytes(8),
    "label" / Bytes(this._params.label_size),
    "context" / GreedyBytes,
)


def bin_concat(version: int, length: int, label: bytes, context: bytes = b"") -> bytes:
    ver = f"spdm{version >> 4}.{version & 0xF} ".encode()
    info: bytes = compiled(BinConcat).build(
        {"length": length, "version": ver, "label": label, "context": context},
        label_size=len(label))
    return info


@dataclass(repr=False)
class DirectionKeys:
    """Secret, key and IV of one direction; the secret is retained for KEY_UPDATE."""

    secret: bytes
    key: bytes
    iv: bytes

    def __repr__(self) -> str:  # never print key material
        return "DirectionKeys(<redacted>)"


@dataclass(repr=False)
class KeySchedule:
    version: int
    base_hash: int
    aead: int
    # PSK Salt_0 override; default 0^H before 1.3 and 0xFF^H from 1.3 on.
    psk_salt: bytes | None = None
    handshake_secret: bytes = field(default=b"", repr=False)
    master_secret: bytes = field(default=b"", repr=False)

    @property
    def hash_size(self) -> int:
        return HASH_SIZE[self.base_hash]

    # HKDF helpers -------------------------------------------------------------------------

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        return crypto.hkdf_extract(self.base_hash, salt, ikm)

    def expand(self, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
        info = bin_concat(self.version, length, label, context)
        return crypto.hkdf_expand(self.base_hash, secret, info, length)

    def derive_secret(self, secret: bytes, label: bytes, context: bytes = b"") -> bytes:
        return self.expand(secret, label, context, self.hash_size)

    def traffic_keys(self, secret: bytes) -> DirectionKeys:
        key = self.expand(secret, b"key", b"", AEAD_KEY_SIZE.get(self.aead, 0) or 32)
        iv = self.expand(secret, b"iv", b"", AEAD_IV_SIZE)
        return DirectionKeys(secret, key, iv)

    # Steps of the figure -----------------------------------------------------------------

    def set_handshake_secret(self, shared_secret: bytes, *, psk: bool = False) -> None:
        salt0 = bytes(self.hash_size)
        if psk:
            # SPDM 1.3 uses Salt_0 = 0xFF^H for PSK sessions (libspdm
            # libspdm_psk_handshake_secret_hkdf_expand: salt0 memset 0xff for >= 1.3).
            if self.psk_salt is not None:
                salt0 = self.psk_salt
            elif self.version >= 0x13:
                salt0 = b"\xff" * self.hash_size
        self.handshake_secret = self.extract(salt0, shared_secret)

    def handshake_keys(self, th1_hash: bytes) -> tuple[DirectionKeys, DirectionKeys]:
        req = self.derive_secret(self.handshake_secret, b"req hs data", th1_hash)
        rsp = self.derive_secret(self.handshake_secret, b"rsp hs data", th1_hash)
        return self.traffic_keys(req), self.traffic_keys(rsp)

    def finished_key(self, hs_secret: bytes) -> bytes:
        return self.derive_secret(hs_secret, b"finished")

    def set_master_secret(self) -> None:
        salt1 = self.derive_secret(self.handshake_secret, b"derived")
        self.master_secret = self.extract(salt1, bytes(self.hash_size))

    def data_keys(self, th2_hash: bytes) -> tuple[DirectionKeys, DirectionKeys]:
        if not self.master_secret:
            self.set_master_secret()
        req = self.derive_secret(self.master_secret, b"req app data", th2_hash)
        rsp = self.derive_secret(self.master_secret, b"rsp app data", th2_hash)
        return self.traffic_keys(req), self.traffic_keys(rsp)

    def export_master_secret(self, th2_hash: bytes) -> bytes:
        if not self.master_secret:
            self.set_master_secret()
        return self.derive_secret(self.master_secret, b"exp master", th2_hash)

    def updated(self, keys: DirectionKeys) -> DirectionKeys:
        """DSP0274 'Major secrets update' (traffic upd)."""
        return self.traffic_keys(self.derive_secret(keys.secret, b"traffic upd"))
