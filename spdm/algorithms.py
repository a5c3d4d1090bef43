"""Algorithm identifiers, sizes and DSP0274 negotiation selection rules.

Bit values: DSP0274 1.2-1.4 Tables 'NEGOTIATE_ALGORITHMS' / 'ALGORITHMS' (libspdm spdm.h).
SPDM 1.4 adds the post-quantum fields (DSP0274 1.4 §10.4): PqcAsymAlgo beside
BaseAsymAlgo, and the ReqPqcAsymAlg (AlgType 6) and KEMAlg (AlgType 7) AlgStructs beside
ReqBaseAsymAlg and DHE.  A connection then signs with exactly one of BaseAsym / PqcAsym
and exchanges keys with exactly one of DHE / KEM.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class BaseAsym(enum.IntFlag):
    RSASSA_2048 = 0x1
    RSAPSS_2048 = 0x2
    RSASSA_3072 = 0x4
    RSAPSS_3072 = 0x8
    ECDSA_P256 = 0x10
    RSASSA_4096 = 0x20
    RSAPSS_4096 = 0x40
    ECDSA_P384 = 0x80
    ECDSA_P521 = 0x100
    SM2_P256 = 0x200
    EDDSA_25519 = 0x400
    EDDSA_448 = 0x800


class BaseHash(enum.IntFlag):
    SHA_256 = 0x1
    SHA_384 = 0x2
    SHA_512 = 0x4
    SHA3_256 = 0x8
    SHA3_384 = 0x10
    SHA3_512 = 0x20
    SM3_256 = 0x40


class MeasHash(enum.IntFlag):
    RAW_BIT_STREAM = 0x1
    SHA_256 = 0x2
    SHA_384 = 0x4
    SHA_512 = 0x8
    SHA3_256 = 0x10
    SHA3_384 = 0x20
    SHA3_512 = 0x40
    SM3_256 = 0x80


class Dhe(enum.IntFlag):
    FFDHE_2048 = 0x1
    FFDHE_3072 = 0x2
    FFDHE_4096 = 0x4
    SECP256R1 = 0x8
    SECP384R1 = 0x10
    SECP521R1 = 0x20
    SM2_P256 = 0x40


class Aead(enum.IntFlag):
    AES_128_GCM = 0x1
    AES_256_GCM = 0x2
    CHACHA20_POLY1305 = 0x4
    SM4_GCM = 0x8


class KeySchedule(enum.IntFlag):
    SPDM = 0x1


class PqcAsym(enum.IntFlag):
    """PqcAsymAlgo / ReqPqcAsymAlg (DSP0274 1.4): ML-DSA (FIPS 204), SLH-DSA (FIPS 205)."""

    ML_DSA_44 = 0x1
    ML_DSA_65 = 0x2
    ML_DSA_87 = 0x4
    SLH_DSA_SHA2_128S = 0x8
    SLH_DSA_SHAKE_128S = 0x10
    SLH_DSA_SHA2_128F = 0x20
    SLH_DSA_SHAKE_128F = 0x40
    SLH_DSA_SHA2_192S = 0x80
    SLH_DSA_SHAKE_192S = 0x100
    SLH_DSA_SHA2_192F = 0x200
    SLH_DSA_SHAKE_192F = 0x400
    SLH_DSA_SHA2_256S = 0x800
    SLH_DSA_SHAKE_256S = 0x1000
    SLH_DSA_SHA2_256F = 0x2000
    SLH_DSA_SHAKE_256F = 0x4000


class Kem(enum.IntFlag):
    """KEMAlg (DSP0274 1.4): ML-KEM (FIPS 203)."""

    ML_KEM_512 = 0x1
    ML_KEM_768 = 0x2
    ML_KEM_1024 = 0x4


class AlgType(enum.IntEnum):
    """AlgStruct AlgType (DSP0274 Table 'Algorithm request structure'; 6 and 7 from 1.4)."""

    DHE = 2
    AEAD = 3
    REQ_BASE_ASYM = 4
    KEY_SCHEDULE = 5
    REQ_PQC_ASYM = 6
    KEM = 7


# Sizes in bytes -------------------------------------------------------------------------

ASYM_SIG_SIZE: dict[int, int] = {
    BaseAsym.RSASSA_2048: 256,
    BaseAsym.RSAPSS_2048: 256,
    BaseAsym.RSASSA_3072: 384,
    BaseAsym.RSAPSS_3072: 384,
    BaseAsym.RSASSA_4096: 512,
    BaseAsym.RSAPSS_4096: 512,
    BaseAsym.ECDSA_P256: 64,
    BaseAsym.ECDSA_P384: 96,
    BaseAsym.ECDSA_P521: 132,
    BaseAsym.EDDSA_25519: 64,
    BaseAsym.EDDSA_448: 114,
}

# FIPS 204 Table 2 (signature bytes); FIPS 205 Table 2 for SLH-DSA, listed for decoding
# other implementations' messages (we cannot sign or verify SLH-DSA: see docs/protocols.md).
PQC_SIG_SIZE: dict[int, int] = {
    PqcAsym.ML_DSA_44: 2420,
    PqcAsym.ML_DSA_65: 3309,
    PqcAsym.ML_DSA_87: 4627,
    PqcAsym.SLH_DSA_SHA2_128S: 7856,
    PqcAsym.SLH_DSA_SHAKE_128S: 7856,
    PqcAsym.SLH_DSA_SHA2_128F: 17088,
    PqcAsym.SLH_DSA_SHAKE_128F: 17088,
    PqcAsym.SLH_DSA_SHA2_192S: 16224,
    PqcAsym.SLH_DSA_SHAKE_192S: 16224,
    PqcAsym.SLH_DSA_SHA2_192F: 35664,
    PqcAsym.SLH_DSA_SHAKE_192F: 35664,
    PqcAsym.SLH_DSA_SHA2_256S: 29792,
    PqcAsym.SLH_DSA_SHAKE_256S: 29792,
    PqcAsym.SLH_DSA_SHA2_256F: 49856,
    PqcAsym.SLH_DSA_SHAKE_256F: 49856,
}

# FIPS 203 Table 3: the encapsulation key the requester sends in KEY_EXCHANGE and the
# ciphertext the responder returns in KEY_EXCHANGE_RSP (DSP0274 1.4 KEY_EXCHANGE).
KEM_ENCAP_KEY_SIZE: dict[int, int] = {Kem.ML_KEM_512: 800, Kem.ML_KEM_768: 1184,
                                      Kem.ML_KEM_1024: 1568}
KEM_CIPHERTEXT_SIZE: dict[int, int] = {Kem.ML_KEM_512: 768, Kem.ML_KEM_768: 1088,
                                       Kem.ML_KEM_1024: 1568}

HASH_SIZE: dict[int, int] = {BaseHash.SHA_256: 32, BaseHash.SHA_384: 48, BaseHash.SHA_512: 64}

MEAS_HASH_SIZE: dict[int, int] = {
    MeasHash.RAW_BIT_STREAM: 0,
    MeasHash.SHA_256: 32,
    MeasHash.SHA_384: 48,
    MeasHash.SHA_512: 64,
}

# DHE ExchangeData size: ECDHE X||Y, FFDHE the public value padded to the prime size.
DHE_SIZE: dict[int, int] = {
    Dhe.FFDHE_2048: 256,
    Dhe.FFDHE_3072: 384,
    Dhe.FFDHE_4096: 512,
    Dhe.SECP256R1: 64,
    Dhe.SECP384R1: 96,
    Dhe.SECP521R1: 132,
}

AEAD_KEY_SIZE: dict[int, int] = {
    Aead.AES_128_GCM: 16,
    Aead.AES_256_GCM: 32,
    Aead.CHACHA20_POLY1305: 32,
}
AEAD_IV_SIZE = 12
AEAD_TAG_SIZE = 16

# What this implementation can do, in our default priority order (strongest first).
SUPPORTED_ASYM: tuple[int, ...] = (
    BaseAsym.ECDSA_P384,
    BaseAsym.ECDSA_P256,
    BaseAsym.ECDSA_P521,
    BaseAsym.RSAPSS_3072,
    BaseAsym.RSASSA_3072,
    BaseAsym.RSAPSS_4096,
    BaseAsym.RSASSA_4096,
    BaseAsym.RSAPSS_2048,
    BaseAsym.RSASSA_2048,
    BaseAsym.EDDSA_25519,
    BaseAsym.EDDSA_448,
)
SUPPORTED_HASH: tuple[int, ...] = (BaseHash.SHA_384, BaseHash.SHA_256, BaseHash.SHA_512)
SUPPORTED_MEAS_HASH: tuple[int, ...] = (
    MeasHash.SHA_384,
    MeasHash.SHA_256,
    MeasHash.SHA_512,
    MeasHash.RAW_BIT_STREAM,
)
SUPPORTED_DHE: tuple[int, ...] = (
    Dhe.SECP384R1,
    Dhe.SECP256R1,
    Dhe.SECP521R1,
    Dhe.FFDHE_3072,
    Dhe.FFDHE_2048,
    Dhe.FFDHE_4096,
)
# ML-DSA-44/65/87 and ML-KEM-768/1024 are what `cryptography` (OpenSSL 3.5+) provides;
# ML-KEM-512 and SLH-DSA are not available to us, so we never offer or select them.
SUPPORTED_PQC_ASYM: tuple[int, ...] = (PqcAsym.ML_DSA_87, PqcAsym.ML_DSA_65, PqcAsym.ML_DSA_44)
SUPPORTED_KEM: tuple[int, ...] = (Kem.ML_KEM_1024, Kem.ML_KEM_768)
SUPPORTED_AEAD: tuple[int, ...] = (
    Aead.AES_256_GCM,
    Aead.AES_128_GCM,
    Aead.CHACHA20_POLY1305,
)


def mask_of(bits: Sequence[int]) -> int:
    m = 0
    for b in bits:
        m |= int(b)
    return m


def select(offered: int, priority: Sequence[int]) -> int:
    """Responder selection: first algorithm of *priority* that the requester offered.

    DSP0274 NEGOTIATE_ALGORITHMS: the responder selects one algorithm from the set the requester
    supports; which one is the responder's policy. Returns 0 when the intersection is empty.
    """
    for bit in priority:
        if offered & int(bit):
            return int(bit)
    return 0


def is_single_bit(value: int) -> bool:
    return value != 0 and value & (value - 1) == 0


def check_selected(selected: int, offered: int, *, allow_zero: bool = False) -> bool:
    """Requester validation: at most one bit, within the offered set (DSP0274 ALGORITHMS
    response)."""
    if selected == 0:
        return allow_zero
    return is_single_bit(selected) and (selected & ~offered) == 0


def algorithm_name(cls: type[enum.IntFlag], value: int) -> str | None:
    """Name of one selected algorithm bit; None for 0, hex for an unknown value."""
    if not value:
        return None
    try:
        return str(cls(value).name)
    except ValueError:
        return f"0x{value:x}"


@dataclass(frozen=True)
class NegotiatedAlgorithms:
    """Result of NEGOTIATE_ALGORITHMS/ALGORITHMS."""

    meas_spec: int = 0
    other_params: int = 0
    meas_hash: int = 0
    base_asym: int = 0
    base_hash: int = 0
    dhe: int = 0
    aead: int = 0
    req_base_asym: int = 0
    key_schedule: int = 0
    # SPDM 1.4: at most one of base_asym / pqc_asym, dhe / kem, req_base_asym /
    # req_pqc_asym is non-zero (DSP0274 1.4 ALGORITHMS).
    pqc_asym: int = 0
    kem: int = 0
    req_pqc_asym: int = 0
    # DSP0274 1.3 MELspecificationSel (DMTF = 1), 0 when no MEL specification was agreed.
    mel_spec: int = 0

    def names(self) -> dict[str, str | None]:
        """The selected algorithms by name (None where nothing was selected), for
        logs, evidence and status reports.  `asym` and `key_exchange` name whichever
        family was selected (classical or post-quantum)."""
        return {
            "asym": self.asym_name,
            "key_exchange": self.key_exchange_name,
            "base_asym": algorithm_name(BaseAsym, self.base_asym),
            "pqc_asym": algorithm_name(PqcAsym, self.pqc_asym),
            "base_hash": algorithm_name(BaseHash, self.base_hash),
            "meas_hash": algorithm_name(MeasHash, self.meas_hash),
            "dhe": algorithm_name(Dhe, self.dhe),
            "kem": algorithm_name(Kem, self.kem),
            "aead": algorithm_name(Aead, self.aead),
            "req_base_asym": algorithm_name(BaseAsym, self.req_base_asym),
            "req_pqc_asym": algorithm_name(PqcAsym, self.req_pqc_asym),
            "key_schedule": algorithm_name(KeySchedule, self.key_schedule),
        }

    @property
    def asym_name(self) -> str | None:
        """The responder's signature algorithm, whichever family it is from."""
        if self.pqc_asym:
            return algorithm_name(PqcAsym, self.pqc_asym)
        return algorithm_name(BaseAsym, self.base_asym)

    @property
    def key_exchange_name(self) -> str | None:
        if self.kem:
            return algorithm_name(Kem, self.kem)
        return algorithm_name(Dhe, self.dhe)

    @property
    def signer(self) -> int:
        """The responder's signature algorithm as an `Asym` key (`asym_key`)."""
        return asym_key(self.base_asym, self.pqc_asym)

    @property
    def req_signer(self) -> int:
        return asym_key(self.req_base_asym, self.req_pqc_asym)

    @property
    def hash_size(self) -> int:
        return HASH_SIZE.get(self.base_hash, 0)

    @property
    def sig_size(self) -> int:
        return signature_size(self.signer)

    @property
    def req_sig_size(self) -> int:
        return signature_size(self.req_signer)

    @property
    def dhe_size(self) -> int:
        return DHE_SIZE.get(self.dhe, 0)

    @property
    def req_exchange_size(self) -> int:
        """KEY_EXCHANGE ExchangeData: the KEM encapsulation key, or the DHE share."""
        if self.kem:
            return KEM_ENCAP_KEY_SIZE.get(self.kem, 0)
        return DHE_SIZE.get(self.dhe, 0)

    @property
    def rsp_exchange_size(self) -> int:
        """KEY_EXCHANGE_RSP ExchangeData: the KEM ciphertext, or the DHE share."""
        if self.kem:
            return KEM_CIPHERTEXT_SIZE.get(self.kem, 0)
        return DHE_SIZE.get(self.dhe, 0)

    @property
    def meas_hash_size(self) -> int:
        return MEAS_HASH_SIZE.get(self.meas_hash, 0)

    @property
    def aead_key_size(self) -> int:
        return AEAD_KEY_SIZE.get(self.aead, 0)


# One namespace for "the signature algorithm" across both families: a classical BaseAsym
# bit as is, a PqcAsym bit shifted above them.  The wire keeps the two fields apart; the
# crypto layer and identities only need to know which single algorithm signs.
PQC_SHIFT = 32


def asym_key(base_asym: int, pqc_asym: int = 0) -> int:
    """The single signature algorithm of a (BaseAsym, PqcAsym) selection."""
    return pqc_asym << PQC_SHIFT if pqc_asym else base_asym


def split_asym(key: int) -> tuple[int, int]:
    """`asym_key` backwards: (BaseAsym bits, PqcAsym bits)."""
    return key & ((1 << PQC_SHIFT) - 1), key >> PQC_SHIFT


def signature_size(key: int) -> int:
    base, pqc = split_asym(key)
    return PQC_SIG_SIZE.get(pqc, 0) if pqc else ASYM_SIG_SIZE.get(base, 0)


def asym_key_name(key: int) -> str | None:
    base, pqc = split_asym(key)
    return algorithm_name(PqcAsym, pqc) if pqc else algorithm_name(BaseAsym, base)
