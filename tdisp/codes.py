"""TDISP constants (PCIe 6.2 chapter 11; libspdm pci_tdisp.h)."""

from __future__ import annotations

import enum

TDISP_VERSION_10 = 0x10  # §11.3.1: major 1 in bits 7:4, minor 0 in bits 3:0
NONCE_SIZE = 32  # START_INTERFACE_NONCE, §11.3.8
PAGE_SIZE = 4096  # MMIO_RANGE granularity, §11.3.11


class RequestCode(enum.IntEnum):
    GET_TDISP_VERSION = 0x81
    GET_TDISP_CAPABILITIES = 0x82
    LOCK_INTERFACE_REQUEST = 0x83
    GET_DEVICE_INTERFACE_REPORT = 0x84
    GET_DEVICE_INTERFACE_STATE = 0x85
    START_INTERFACE_REQUEST = 0x86
    STOP_INTERFACE_REQUEST = 0x87
    BIND_P2P_STREAM_REQUEST = 0x88
    UNBIND_P2P_STREAM_REQUEST = 0x89
    SET_MMIO_ATTRIBUTE_REQUEST = 0x8A
    VDM_REQUEST = 0x8B


class ResponseCode(enum.IntEnum):
    TDISP_VERSION = 0x01
    TDISP_CAPABILITIES = 0x02
    LOCK_INTERFACE_RESPONSE = 0x03
    DEVICE_INTERFACE_REPORT = 0x04
    DEVICE_INTERFACE_STATE = 0x05
    START_INTERFACE_RESPONSE = 0x06
    STOP_INTERFACE_RESPONSE = 0x07
    BIND_P2P_STREAM_RESPONSE = 0x08
    UNBIND_P2P_STREAM_RESPONSE = 0x09
    SET_MMIO_ATTRIBUTE_RESPONSE = 0x0A
    VDM_RESPONSE = 0x0B
    TDISP_ERROR = 0x7F


class ErrorCode(enum.IntEnum):
    """TDISP_ERROR ERROR_CODE (§11.3.17)."""

    INVALID_REQUEST = 0x0001
    BUSY = 0x0003
    INVALID_INTERFACE_STATE = 0x0004
    UNSPECIFIED = 0x0005
    UNSUPPORTED_REQUEST = 0x0007
    VERSION_MISMATCH = 0x0041
    VENDOR_SPECIFIC_ERROR = 0x00FF
    INVALID_INTERFACE = 0x0101
    INVALID_NONCE = 0x0102
    INSUFFICIENT_ENTROPY = 0x0103
    INVALID_DEVICE_CONFIGURATION = 0x0104


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"0x{code:x}"


class TdiState(enum.IntEnum):
    """TDI_STATE in DEVICE_INTERFACE_STATE (§11.3.13)."""

    CONFIG_UNLOCKED = 0
    CONFIG_LOCKED = 1
    RUN = 2
    ERROR = 3


class LockFlags(enum.IntFlag):
    """LOCK_INTERFACE_REQUEST FLAGS (§11.3.8); bits 15:5 reserved."""

    NO_FW_UPDATE = 0x01
    SYSTEM_CACHE_LINE_SIZE = 0x02
    LOCK_MSIX = 0x04
    BIND_P2P = 0x08
    ALL_REQUEST_REDIRECT = 0x10


LOCK_FLAGS_RESERVED = 0xFFE0


class InterfaceInfo(enum.IntFlag):
    """DEVICE_INTERFACE_REPORT INTERFACE_INFO (§11.3.11); bits 15:5 reserved in TDISP 1.0."""

    NO_UPDATE_AFTER_LOCK = 0x01
    DMA_WITHOUT_PASID = 0x02
    DMA_WITH_PASID = 0x04
    ATS_SUPPORTED = 0x08
    PRS_SUPPORTED = 0x10


class MmioAttr(enum.IntFlag):
    """MMIO_RANGE range attributes (§11.3.11); bits 15:4 reserved."""

    MSIX_TABLE = 0x1
    MSIX_PBA = 0x2
    NON_TEE = 0x4
    UPDATABLE = 0x8


REGISTRY_ID_PCISIG = 0x00  # VDM / extended error data registry ids (§11.3.16)
REGISTRY_ID_CXL = 0x01
