"""Cryptographic primitives for SPDM over `cryptography` (DSP0274 §'Cryptographic algorithms').

Encodings follow libspdm doc/crypto_endianness.md for SPDM 1.2+: ECDSA signatures are r||s
big-endian, each of the curve's coordinate size; RSA signatures big-endian; ECDHE
ExchangeData X||Y big-endian; FFDHE public values big-endian padded to the prime size.

SPDM 1.4 post-quantum algorithms: ML-DSA (FIPS 204) signatures are the raw FIPS 204
encoding, computed over the same 100-byte prefix || Hash(transcript) as every 1.2+
signature, with the prefix's context string ("responder-key_exchange_rsp signing", ...)
also passed as the ML-DSA context string ctx (DSP0274 1.4 §15, as libspdm does); ML-KEM
(FIPS 203) ExchangeData is the raw encapsulation key (KEY_EXCHANGE) and ciphertext
(KEY_EXCHANGE_RSP), and the 32-byte shared secret takes the DHE secret's place in the key
schedule.

Randomness: ECDSA uses RFC 6979 nonces and ECDHE/FFDHE/ML-KEM key pairs are derived from
the caller's random source (ML-KEM from a 64-byte FIPS 203 seed), so classical suites
reproduce byte for byte.  Two things `cryptography` does not let us inject: ML-DSA
signing is hedged (OpenSSL draws rnd, FIPS 204 Algorithm 2) and ML-KEM encapsulation
draws its message m inside OpenSSL (FIPS 203 Algorithm 17) -- so a responder's
ML-DSA signatures and KEM ciphertexts differ between seeded runs, like RSASSA-PSS salts.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
from collections.abc import Callable
from functools import cache

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import (
    ec,
    ed448,
    ed25519,
    mldsa,
    mlkem,
    padding,
    rsa,
)
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from spdm.algorithms import (
    AEAD_KEY_SIZE,
    KEM_CIPHERTEXT_SIZE,
    KEM_ENCAP_KEY_SIZE,
    BaseAsym,
    BaseHash,
    Dhe,
    Kem,
    MeasHash,
    PqcAsym,
    asym_key,
    split_asym,
)
from spdm.algorithms import Aead as AeadAlg
from spdm.errors import CryptoError as CryptoError  # re-exported: raised here

MlDsaPrivateKey = (
    mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey
)
MlDsaPublicKey = mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey
PrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | MlDsaPrivateKey
)
PublicKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    | MlDsaPublicKey
)

_HASHLIB: dict[int, str] = {
    BaseHash.SHA_256: "sha256", BaseHash.SHA_384: "sha384", BaseHash.SHA_512: "sha512",
}
_MEAS_HASHLIB = {MeasHash.SHA_256: "sha256", MeasHash.SHA_384: "sha384", MeasHash.SHA_512: "sha512"}


# Hash / HMAC / HKDF ---------------------------------------------------------------------


def hash_name(base_hash: int) -> str:
    # IntEnum keys hash and compare as their int values: no BaseHash(...) conversion,
    # which cost more than the hash itself on this hot path (every HMAC and digest).
    name = _HASHLIB.get(base_hash)
    if name is None:
        raise CryptoError(f"unsupported hash 0x{base_hash:x}")
    return name


def digest(base_hash: int, data: bytes) -> bytes:
    return hashlib.new(hash_name(base_hash), data).digest()


def meas_digest(meas_hash: int, data: bytes) -> bytes:
    """MeasurementHashAlgo digest; RawBitStreamOnly returns the data itself."""
    if meas_hash == MeasHash.RAW_BIT_STREAM:
        return data
    return hashlib.new(_MEAS_HASHLIB[MeasHash(meas_hash)], data).digest()


def hmac(base_hash: int, key: bytes, data: bytes) -> bytes:
    return _hmac.digest(key, data, hash_name(base_hash))  # OpenSSL one-shot, no HMAC object


def hkdf_extract(base_hash: int, salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 HKDF-Extract = HMAC-Hash(salt, IKM)."""
    return hmac(base_hash, salt, ikm)


def hkdf_expand(base_hash: int, prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac(base_hash, prk, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


def _hash_obj(base_hash: int) -> hashes.HashAlgorithm:
    return {
        BaseHash.SHA_256: hashes.SHA256(),
        BaseHash.SHA_384: hashes.SHA384(),
        BaseHash.SHA_512: hashes.SHA512(),
    }[BaseHash(base_hash)]


# Signatures --------------------------------------------------------------------------------

_EC_CURVES: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    BaseAsym.ECDSA_P256: (ec.SECP256R1, 32),
    BaseAsym.ECDSA_P384: (ec.SECP384R1, 48),
    BaseAsym.ECDSA_P521: (ec.SECP521R1, 66),
}
_RSA: dict[int, tuple[int, bool]] = {
    BaseAsym.RSASSA_2048: (2048, False),
    BaseAsym.RSAPSS_2048: (2048, True),
    BaseAsym.RSASSA_3072: (3072, False),
    BaseAsym.RSAPSS_3072: (3072, True),
    BaseAsym.RSASSA_4096: (4096, False),
    BaseAsym.RSAPSS_4096: (4096, True),
}


# PqcAsymAlgo bit -> the ML-DSA key classes of that parameter set.
_MLDSA: dict[int, tuple[type[MlDsaPrivateKey], type[MlDsaPublicKey]]] = {
    PqcAsym.ML_DSA_44: (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey),
    PqcAsym.ML_DSA_65: (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey),
    PqcAsym.ML_DSA_87: (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey),
}


def key_matches_asym(key: PublicKey | PrivateKey, asym: int) -> bool:
    """Whether a key can produce signatures of the negotiated signature algorithm, given
    as `spdm.algorithms.asym_key` (a BaseAsymAlgo bit, or a PqcAsymAlgo bit shifted)."""
    base, pqc = split_asym(asym)
    if pqc:
        classes = _MLDSA.get(pqc)
        return classes is not None and isinstance(key, classes)
    return _classical_matches(key, base)


def _classical_matches(key: PublicKey | PrivateKey, asym: int) -> bool:
    if asym in _EC_CURVES:
        curve_cls, _ = _EC_CURVES[asym]
        return isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and (
            isinstance(key.curve, curve_cls)
        )
    if asym in _RSA:
        bits, _ = _RSA[asym]
        return isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) and key.key_size == bits
    if asym == BaseAsym.EDDSA_25519:
        return isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey)
    if asym == BaseAsym.EDDSA_448:
        return isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey)
    return False


def asym_capabilities_of_key(key: PublicKey | PrivateKey) -> int:
    """All signature algorithms a key can serve, as `asym_key` bits (BaseAsymAlgo bits,
    PqcAsymAlgo bits shifted by `spdm.algorithms.PQC_SHIFT`)."""
    mask = 0
    for bit in list(_EC_CURVES) + list(_RSA) + [BaseAsym.EDDSA_25519, BaseAsym.EDDSA_448]:
        if _classical_matches(key, bit):
            mask |= int(bit)
    for pqc in _MLDSA:
        if key_matches_asym(key, asym_key(0, pqc)):
            mask |= asym_key(0, pqc)
    return mask


def _deterministic_ecdsa() -> bool:
    try:
        ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    except UnsupportedAlgorithm:  # an OpenSSL before 3.2 under cryptography
        return False
    return True


# RFC 6979 deterministic nonces: an ECDSA signature then needs no randomness, so an engine
# with an injected random source reproduces its messages byte for byte.  (RSASSA-PSS
# draws its salt inside OpenSSL; that is the one signature that stays randomised.)
_ECDSA_DETERMINISTIC = _deterministic_ecdsa()


def _rsa_padding(pss: bool, h: hashes.HashAlgorithm) -> padding.AsymmetricPadding:
    # DSP0274: RSAPSS salt length equals the hash length.
    if pss:
        return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
    return padding.PKCS1v15()


def sign(asym: int, base_hash: int, key: PrivateKey, message: bytes,
         context: bytes = b"") -> bytes:
    """Sign *message* (already prefixed per DSP0274 §'Signature generation').  `asym` is
    an `asym_key`; `context` is the signing context string, which ML-DSA also takes as its
    own context (DSP0274 1.4 §15)."""
    if not key_matches_asym(key, asym):
        raise CryptoError("private key does not match the negotiated signature algorithm")
    if isinstance(key, mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey
                  | mldsa.MLDSA87PrivateKey):
        return key.sign(message, context)
    if asym in _EC_CURVES:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        _, size = _EC_CURVES[asym]
        der = key.sign(message, ec.ECDSA(_hash_obj(base_hash),
                                         deterministic_signing=_ECDSA_DETERMINISTIC))
        r, s = decode_dss_signature(der)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if asym in _RSA:
        assert isinstance(key, rsa.RSAPrivateKey)
        _, pss = _RSA[asym]
        h = _hash_obj(base_hash)
        return key.sign(message, _rsa_padding(pss, h), h)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return key.sign(message)
    raise CryptoError(f"unsupported asym 0x{asym:x}")


def verify(asym: int, base_hash: int, key: PublicKey, message: bytes, signature: bytes,
           context: bytes = b"") -> bool:
    if not key_matches_asym(key, asym):
        return False
    try:
        if isinstance(key, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey
                      | mldsa.MLDSA87PublicKey):
            key.verify(signature, message, context)
            return True
        if asym in _EC_CURVES:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            _, size = _EC_CURVES[asym]
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), message, ec.ECDSA(_hash_obj(base_hash)))
            return True
        if asym in _RSA:
            assert isinstance(key, rsa.RSAPublicKey)
            _, pss = _RSA[asym]
            h = _hash_obj(base_hash)
            key.verify(signature, message, _rsa_padding(pss, h), h)
            return True
        if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, message)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


# Signing context, DSP0274 1.2 §15 'Signature generation' ----------------------------------

SIGNING_PREFIX_SIZE = 100  # 64 bytes of version prefix + 36 bytes context area

CTX_CHALLENGE_AUTH = b"responder-challenge_auth signing"
CTX_REQ_CHALLENGE_AUTH = b"requester-challenge_auth signing"
CTX_MEASUREMENTS = b"responder-measurements signing"
CTX_KEY_EXCHANGE_RSP = b"responder-key_exchange_rsp signing"
CTX_FINISH = b"requester-finish signing"


def signing_prefix(version: int, context: bytes) -> bytes:
    """"dmtf-spdm-v1.X.*" four times, then zero padding and the context string (100 bytes)."""
    ver = f"dmtf-spdm-v{version >> 4}.{version & 0xF}.*".encode()
    pad = SIGNING_PREFIX_SIZE - 4 * len(ver) - len(context)
    return ver * 4 + b"\x00" * pad + context


def message_to_sign(version: int, base_hash: int, context: bytes, transcript: bytes) -> bytes:
    """What the signature algorithm is applied to.

    SPDM 1.2+: prefix || Hash(transcript) (DSP0274 1.2 §15). SPDM 1.0/1.1: the transcript itself
    (the signature algorithm hashes it).
    """
    if version >= 0x12:
        return signing_prefix(version, context) + digest(base_hash, transcript)
    return transcript


# DHE ---------------------------------------------------------------------------------------


def _e_scaled(bits: int) -> int:
    """floor(e * 2**bits), by summing 1/k! in fixed point with guard bits."""
    guard = 64
    term = 1 << (bits + guard)
    total = 0
    k = 0
    while term:
        total += term
        k += 1
        term //= k
    return total >> guard


@cache
def ffdhe_prime(bits: int) -> int:
    """RFC 7919 §A: p = 2^b - 2^{b-64} + ({[2^{b-130} e] + X} * 2^64) - 1."""
    x = {2048: 560316, 3072: 2625351, 4096: 5736041}[bits]
    p: int = (1 << bits) - (1 << (bits - 64)) + ((_e_scaled(bits - 130) + x) << 64) - 1
    return p


_FFDHE_BITS: dict[int, int] = {Dhe.FFDHE_2048: 2048, Dhe.FFDHE_3072: 3072, Dhe.FFDHE_4096: 4096}
_ECDHE: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    Dhe.SECP256R1: (ec.SECP256R1, 32),
    Dhe.SECP384R1: (ec.SECP384R1, 48),
    Dhe.SECP521R1: (ec.SECP521R1, 66),
}
# Group orders n (FIPS 186-5 / SEC 2 "Recommended Elliptic Curve Domain Parameters"):
# an ephemeral private key is a scalar in [1, n-1] drawn from the caller's random source.
_EC_ORDER: dict[int, int] = {
    Dhe.SECP256R1: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    Dhe.SECP384R1: int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
        "581A0DB248B0A77AECEC196ACCC52973", 16),
    Dhe.SECP521R1: int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783B"
        "F2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409", 16),
}


def _scalar(random: Callable[[int], bytes], low: int, high: int) -> int:
    """A uniform-enough integer in [low, high) from `random`: 64 bits more than the range
    needs, reduced (bias below 2^-64)."""
    span = high - low
    return low + int.from_bytes(random((span.bit_length() + 7) // 8 + 8), "big") % span


class DheKey:
    """An ephemeral DHE key pair for KEY_EXCHANGE (DSP0274 KEY_EXCHANGE clause).

    FFDHE is computed with Python integers over the RFC 7919 groups (generator 2):
    cryptography 50 deprecates its finite-field DH API. This is a reference emulator, not a
    side-channel hardened implementation.
    """

    def __init__(self, dhe: int, random: Callable[[int], bytes]) -> None:
        self.dhe = dhe
        self._ec: ec.EllipticCurvePrivateKey | None = None
        self._ff_x = 0
        if dhe in _ECDHE:
            curve, _ = _ECDHE[dhe]
            self._ec = ec.derive_private_key(_scalar(random, 1, _EC_ORDER[dhe]), curve())
        elif dhe in _FFDHE_BITS:
            p = ffdhe_prime(_FFDHE_BITS[dhe])
            self._ff_x = _scalar(random, 2, p - 2)
        else:
            raise CryptoError(f"unsupported DHE 0x{dhe:x}")

    def exchange_data(self) -> bytes:
        if self._ec is not None:
            _, size = _ECDHE[self.dhe]
            nums = self._ec.public_key().public_numbers()
            return nums.x.to_bytes(size, "big") + nums.y.to_bytes(size, "big")
        bits = _FFDHE_BITS[self.dhe]
        return pow(2, self._ff_x, ffdhe_prime(bits)).to_bytes(bits // 8, "big")

    def shared_secret(self, peer: bytes) -> bytes:
        if self._ec is not None:
            curve, size = _ECDHE[self.dhe]
            if len(peer) != 2 * size:
                raise CryptoError("bad ECDHE exchange data length")
            try:
                pub = ec.EllipticCurvePublicNumbers(
                    int.from_bytes(peer[:size], "big"), int.from_bytes(peer[size:], "big"), curve()
                ).public_key()
            except ValueError as exc:
                raise CryptoError(f"invalid ECDHE point: {exc}") from exc
            return self._ec.exchange(ec.ECDH(), pub)
        bits = _FFDHE_BITS[self.dhe]
        if len(peer) != bits // 8:
            raise CryptoError("bad FFDHE exchange data length")
        y = int.from_bytes(peer, "big")
        p = ffdhe_prime(bits)
        # RFC 7919 §5.1: reject 0, 1 and p-1 (and anything not below p).
        if not 1 < y < p - 1:
            raise CryptoError("FFDHE public value out of range")
        return pow(y, self._ff_x, p).to_bytes(bits // 8, "big")


# KEM (DSP0274 1.4 KEY_EXCHANGE with KEMAlg) ---------------------------------------------

_MLKEM: dict[int, tuple[type[mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey],
                        type[mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey]]] = {
    Kem.ML_KEM_768: (mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey),
    Kem.ML_KEM_1024: (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey),
}
MLKEM_SEED_SIZE = 64  # FIPS 203 ML-KEM.KeyGen_internal(d, z): two 32-byte seeds


class KemKey:
    """The requester's ephemeral ML-KEM key pair: KEY_EXCHANGE carries its encapsulation
    key, KEY_EXCHANGE_RSP the responder's ciphertext, which only this key decapsulates.
    Derived from 64 bytes of the caller's random source (FIPS 203 seed d || z)."""

    def __init__(self, kem: int, random: Callable[[int], bytes]) -> None:
        classes = _MLKEM.get(kem)
        if classes is None:
            raise CryptoError(f"unsupported KEM 0x{kem:x}")
        self.kem = kem
        self._key = classes[0].from_seed_bytes(random(MLKEM_SEED_SIZE))

    def exchange_data(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def shared_secret(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != KEM_CIPHERTEXT_SIZE[self.kem]:
            raise CryptoError("bad KEM ciphertext length")
        try:
            return self._key.decapsulate(ciphertext)
        except ValueError as exc:
            raise CryptoError(f"KEM decapsulation failed: {exc}") from exc


def kem_encapsulate(kem: int, encap_key: bytes) -> tuple[bytes, bytes]:
    """Responder side: (shared secret, ciphertext) for the requester's encapsulation key.
    FIPS 203 §7.2's input check (the key's length and its coefficients modulo q) is
    OpenSSL's: a bad key raises CryptoError."""
    classes = _MLKEM.get(kem)
    if classes is None:
        raise CryptoError(f"unsupported KEM 0x{kem:x}")
    if len(encap_key) != KEM_ENCAP_KEY_SIZE[kem]:
        raise CryptoError("bad KEM encapsulation key length")
    try:
        shared, ciphertext = classes[1].from_public_bytes(encap_key).encapsulate()
    except ValueError as exc:
        raise CryptoError(f"invalid KEM encapsulation key: {exc}") from exc
    return shared, ciphertext


# AEAD --------------------------------------------------------------------------------------


def aead_encrypt(aead: int, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Returns ciphertext || 16-byte tag."""
    if len(key) != AEAD_KEY_SIZE.get(aead, -1):
        raise CryptoError("bad AEAD key length")
    if aead in (AeadAlg.AES_128_GCM, AeadAlg.AES_256_GCM):
        return AESGCM(key).encrypt(nonce, plaintext, aad)
    if aead == AeadAlg.CHACHA20_POLY1305:
        return ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)
    raise CryptoError(f"unsupported AEAD 0x{aead:x}")


def aead_decrypt(aead: int, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Raises CryptoError when the tag does not verify."""
    try:
        if aead in (AeadAlg.AES_128_GCM, AeadAlg.AES_256_GCM):
            return AESGCM(key).decrypt(nonce, ciphertext, aad)
        if aead == AeadAlg.CHACHA20_POLY1305:
            return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag as exc:
        raise CryptoError("AEAD authentication failed") from exc
    raise CryptoError(f"unsupported AEAD 0x{aead:x}")


def hmac_compare(a: bytes, b: bytes) -> bool:
    return _hmac.compare_digest(a, b)
