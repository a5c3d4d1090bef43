"""SPDM numeric constants (DSP0274 1.2-1.4 tables; libspdm industry_standard/spdm.h)."""

from __future__ import annotations

import enum

# Version numbers as the u8 SPDMVersion header byte (major << 4 | minor), DSP0274 'SPDM version'.
V10 = 0x10
V11 = 0x11
V12 = 0x12
V13 = 0x13
V14 = 0x14
SUPPORTED_VERSIONS: tuple[int, ...] = (V10, V11, V12, V13, V14)


def version_entry(version: int) -> int:
    """u16 VersionNumberEntry: major bits 15:12, minor bits 11:8 (DSP0274 Table 'VERSION')."""
    return (version & 0xFF) << 8


def version_from_entry(entry: int) -> int:
    return (entry >> 8) & 0xFF


class Req(enum.IntEnum):
    GET_DIGESTS = 0x81
    GET_CERTIFICATE = 0x82
    CHALLENGE = 0x83
    GET_VERSION = 0x84
    CHUNK_SEND = 0x85
    CHUNK_GET = 0x86
    GET_ENDPOINT_INFO = 0x87
    GET_MEASUREMENTS = 0xE0
    GET_CAPABILITIES = 0xE1
    GET_SUPPORTED_EVENT_TYPES = 0xE2
    NEGOTIATE_ALGORITHMS = 0xE3
    KEY_EXCHANGE = 0xE4
    FINISH = 0xE5
    PSK_EXCHANGE = 0xE6
    PSK_FINISH = 0xE7
    HEARTBEAT = 0xE8
    KEY_UPDATE = 0xE9
    GET_ENCAPSULATED_REQUEST = 0xEA
    DELIVER_ENCAPSULATED_RESPONSE = 0xEB
    END_SESSION = 0xEC
    GET_CSR = 0xED
    SET_CERTIFICATE = 0xEE
    GET_MEASUREMENT_EXTENSION_LOG = 0xEF
    SUBSCRIBE_EVENT_TYPES = 0xF0
    SEND_EVENT = 0xF1
    GET_KEY_PAIR_INFO = 0xFC
    SET_KEY_PAIR_INFO = 0xFD
    VENDOR_DEFINED_REQUEST = 0xFE
    RESPOND_IF_READY = 0xFF


class Rsp(enum.IntEnum):
    DIGESTS = 0x01
    CERTIFICATE = 0x02
    CHALLENGE_AUTH = 0x03
    VERSION = 0x04
    CHUNK_SEND_ACK = 0x05
    CHUNK_RESPONSE = 0x06
    ENDPOINT_INFO = 0x07
    MEASUREMENTS = 0x60
    CAPABILITIES = 0x61
    SUPPORTED_EVENT_TYPES = 0x62
    ALGORITHMS = 0x63
    KEY_EXCHANGE_RSP = 0x64
    FINISH_RSP = 0x65
    PSK_EXCHANGE_RSP = 0x66
    PSK_FINISH_RSP = 0x67
    HEARTBEAT_ACK = 0x68
    KEY_UPDATE_ACK = 0x69
    ENCAPSULATED_REQUEST = 0x6A
    ENCAPSULATED_RESPONSE_ACK = 0x6B
    END_SESSION_ACK = 0x6C
    CSR = 0x6D
    SET_CERTIFICATE_RSP = 0x6E
    MEASUREMENT_EXTENSION_LOG = 0x6F
    SUBSCRIBE_EVENT_TYPES_ACK = 0x70
    EVENT_ACK = 0x71
    KEY_PAIR_INFO = 0x7C
    SET_KEY_PAIR_INFO_ACK = 0x7D
    VENDOR_DEFINED_RESPONSE = 0x7E
    ERROR = 0x7F


class ErrorCode(enum.IntEnum):
    INVALID_REQUEST = 0x01
    INVALID_SESSION = 0x02  # reserved from 1.2 on
    BUSY = 0x03
    UNEXPECTED_REQUEST = 0x04
    UNSPECIFIED = 0x05
    DECRYPT_ERROR = 0x06
    UNSUPPORTED_REQUEST = 0x07
    REQUEST_IN_FLIGHT = 0x08
    INVALID_RESPONSE_CODE = 0x09
    SESSION_LIMIT_EXCEEDED = 0x0A
    SESSION_REQUIRED = 0x0B
    RESET_REQUIRED = 0x0C
    RESPONSE_TOO_LARGE = 0x0D
    REQUEST_TOO_LARGE = 0x0E
    LARGE_RESPONSE = 0x0F
    MESSAGE_LOST = 0x10
    INVALID_POLICY = 0x11
    VERSION_MISMATCH = 0x41
    RESPONSE_NOT_READY = 0x42
    REQUEST_RESYNCH = 0x43
    OPERATION_FAILED = 0x44
    NO_PENDING_REQUESTS = 0x45
    VENDOR_DEFINED = 0xFF


class ReqCap(enum.IntFlag):
    """GET_CAPABILITIES Flags (DSP0274 1.3 Table 'Requester flag fields')."""

    CERT = 1 << 1
    CHAL = 1 << 2
    ENCRYPT = 1 << 6
    MAC = 1 << 7
    MUT_AUTH = 1 << 8
    KEY_EX = 1 << 9
    PSK = 1 << 10  # requester: 01b only
    ENCAP = 1 << 12
    HBEAT = 1 << 13
    KEY_UPD = 1 << 14
    HANDSHAKE_IN_THE_CLEAR = 1 << 15
    PUB_KEY_ID = 1 << 16
    CHUNK = 1 << 17
    EP_INFO_NO_SIG = 1 << 22
    EP_INFO_SIG = 1 << 23
    EVENT = 1 << 25
    MULTI_KEY_ONLY = 1 << 26
    MULTI_KEY_NEG = 1 << 27
    LARGE_RESP = 1 << 31


class RspCap(enum.IntFlag):
    """CAPABILITIES Flags (DSP0274 1.3 Table 'Responder flag fields')."""

    CACHE = 1 << 0
    CERT = 1 << 1
    CHAL = 1 << 2
    MEAS_NO_SIG = 1 << 3
    MEAS_SIG = 1 << 4
    MEAS_FRESH = 1 << 5
    ENCRYPT = 1 << 6
    MAC = 1 << 7
    MUT_AUTH = 1 << 8
    KEY_EX = 1 << 9
    PSK = 1 << 10
    PSK_WITH_CONTEXT = 1 << 11
    ENCAP = 1 << 12
    HBEAT = 1 << 13
    KEY_UPD = 1 << 14
    HANDSHAKE_IN_THE_CLEAR = 1 << 15
    PUB_KEY_ID = 1 << 16
    CHUNK = 1 << 17
    ALIAS_CERT = 1 << 18
    SET_CERT = 1 << 19
    CSR = 1 << 20
    CERT_INSTALL_RESET = 1 << 21
    EP_INFO_NO_SIG = 1 << 22
    EP_INFO_SIG = 1 << 23
    MEL = 1 << 24
    EVENT = 1 << 25
    MULTI_KEY_ONLY = 1 << 26
    MULTI_KEY_NEG = 1 << 27
    GET_KEY_PAIR_INFO = 1 << 28
    SET_KEY_PAIR_INFO = 1 << 29
    SET_KEY_PAIR_RESET = 1 << 30
    LARGE_RESP = 1 << 31


# The CAPABILITIES flag bits each version defines (DSP0274 1.0: bits 5:0; 1.1 adds the
# session bits through PUB_KEY_ID, bit 16; 1.2 adds CHUNK..CERT_INSTALL_RESET, bits 21:17;
# 1.3 adds EP_INFO..SET_KEY_PAIR_RESET, bits 30:22).  A responder answering in an older
# version clears the bits that version does not have.
_RSP_CAP_BITS = {0x10: 0x3F, 0x11: 0x1FFFF, 0x12: 0x3FFFFF, 0x13: 0x7FFFFFFF}


def rsp_caps_for_version(caps: int, version: int) -> int:
    """`caps` limited to the flags `version` defines."""
    return caps & _RSP_CAP_BITS.get(version, 0xFFFFFFFF)


MEAS_CAP_MASK = RspCap.MEAS_NO_SIG | RspCap.MEAS_SIG
PSK_CAP_MASK = 3 << 10

# Measurement specification (DSP0274 Table 'MeasurementSpecification'): DMTF
MEAS_SPEC_DMTF = 0x01

# OtherParamsSupport/Selection (DSP0274 1.2 NEGOTIATE_ALGORITHMS): opaque data format and (1.3)
# multi-key connection.
OPAQUE_FMT_0 = 0x1
OPAQUE_FMT_1 = 0x2
OPAQUE_FMT_MASK = 0xF
MULTI_KEY_CONN = 0x10

# MELspecification / MELspecificationSel (DSP0274 1.3 NEGOTIATE_ALGORITHMS byte 31): DMTF
MEL_SPEC_DMTF = 0x01


class KeyUsage(enum.IntFlag):
    """KeyUsageMask (DSP0274 1.3 DIGESTS / KEY_PAIR_INFO): what a key pair may sign."""

    KEY_EX = 0x0001
    CHALLENGE = 0x0002
    MEASUREMENT = 0x0004
    ENDPOINT_INFO = 0x0008
    STANDARDS_KEY = 0x4000
    VENDOR_KEY = 0x8000


class CertModel(enum.IntEnum):
    """CertificateInfo / CertModel (DSP0274 1.3 DIGESTS, CERTIFICATE Param2, GET_CSR and
    SET_CERTIFICATE attributes)."""

    NONE = 0
    DEVICE_CERT = 1
    ALIAS_CERT = 2
    GENERIC_CERT = 3


class KeyPairCap(enum.IntFlag):
    """KEY_PAIR_INFO Capabilities (DSP0274 1.3 'Key pair capabilities')."""

    GEN_KEY = 0x01
    ERASABLE = 0x02
    CERT_ASSOC = 0x04
    KEY_USAGE = 0x08
    ASYM_ALGO = 0x10
    SHAREABLE = 0x20


class KeyPairAsym(enum.IntFlag):
    """KEY_PAIR_INFO AsymAlgoCapabilities / CurrentAsymAlgo bits (DSP0274 1.3)."""

    RSA2048 = 0x001
    RSA3072 = 0x002
    RSA4096 = 0x004
    ECC256 = 0x008
    ECC384 = 0x010
    ECC521 = 0x020
    SM2 = 0x040
    ED25519 = 0x080
    ED448 = 0x100


# Measurement summary hash types (CHALLENGE / KEY_EXCHANGE / PSK_EXCHANGE Param)
MEAS_SUMMARY_NONE = 0x00
MEAS_SUMMARY_TCB = 0x01
MEAS_SUMMARY_ALL = 0xFF

# KEY_UPDATE operations (DSP0274 KEY_UPDATE 'KeyOperation' table)
KEY_UPDATE_UPDATE_KEY = 1
KEY_UPDATE_UPDATE_ALL_KEYS = 2
KEY_UPDATE_VERIFY_NEW_KEY = 3

# KEY_EXCHANGE_RSP MutAuthRequested bits (DSP0274 1.2 Table 'KEY_EXCHANGE_RSP')
MUT_AUTH_REQUESTED = 0x1
MUT_AUTH_WITH_ENCAP_REQUEST = 0x2
MUT_AUTH_WITH_GET_DIGESTS = 0x4

NONCE_SIZE = 32
RANDOM_SIZE = 32
REQUESTER_CONTEXT_SIZE = 8  # 1.3 CHALLENGE / GET_MEASUREMENTS RequesterContext
MAX_SLOTS = 8
MIN_DATA_TRANSFER_SIZE_12 = 42  # DSP0274 1.2 GET_CAPABILITIES MinDataTransferSize

# PCI-SIG vendor-defined framing (PCIe 6.x CMA/SPDM clause; libspdm pcidoe.h)
STANDARD_ID_PCISIG = 0x0003
PCISIG_VENDOR_ID = 0x0001
PCISIG_PROTOCOL_IDE_KM = 0x00
PCISIG_PROTOCOL_TDISP = 0x01
