"""Every exception the tdisp package (IDE_KM and TDISP) raises: one root, `IdeTdispError`.

    IdeTdispError
    +-- VdmRefused             responder: the request gets no IDE_KM/TDISP response at all;
    |                          the SPDM layer answers ERROR `spdm_error` (class attribute)
    +-- TdispRequestError      responder: answered with TDISP_ERROR `code` (class attribute,
    |                          one subclass per PCIe 6.2 §11.3.17 ERROR_CODE)
    +-- TdispProtocolError     requester: the device's response is not acceptable
        +-- MalformedMessage, UnexpectedResponse, TdispErrorResponse, IdeKmStatusError

IDE_KM has no error message at all (PCIe 6.2 §6.33.3) and TDISP requires a secured
session (§11.3), so a request that cannot be answered within the protocol is refused at
the SPDM level: `VdmRefused`'s subclasses name the SPDM error class the carrier raises
(`VdmRefused.spdm_refusal`, raised by `PciSigVdmDispatcher.spdm_handler`), or the
transport may drop the request (tee-io-validator IdeKmTestCase 5.1 only checks that no
IDE_KM response comes back).
"""

from __future__ import annotations

import enum
from typing import ClassVar

from spdm.errors import (
    InvalidRequest,
    RequestRefused,
    SessionRequired,
    UnexpectedRequest,
    UnsupportedRequest,
)
from tdisp.codes import ErrorCode, error_name


class IdeTdispError(Exception):
    """Root of the tdisp package's exceptions."""


# ---- responder side: no protocol response -------------------------------------------


class RefusalKind(enum.Enum):
    NO_SESSION = "no-session"  # IDE_KM/TDISP must arrive inside a secured session
    OTHER_SESSION = "other-session"  # IDE_KM is owned by another, still open session
    MALFORMED = "malformed"  # framing too broken to answer within the protocol
    UNKNOWN_PROTOCOL = "unknown-protocol"  # ProtocolID other than IDE_KM / TDISP
    INVALID_STATE = "invalid-state"  # e.g. K_SET_GO for a key set never programmed


class VdmRefused(IdeTdispError):
    """The vendor-defined request gets no protocol-level response; the SPDM layer
    answers with an SPDM ERROR of class `spdm_error`."""

    kind: ClassVar[RefusalKind]
    spdm_error: ClassVar[type[RequestRefused]]

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{self.kind.value}: {reason}")

    def spdm_refusal(self) -> RequestRefused:
        """The SPDM-level error the carrier raises instead."""
        return self.spdm_error(str(self))


class NoSession(VdmRefused):
    kind = RefusalKind.NO_SESSION
    spdm_error = SessionRequired


class OtherSession(VdmRefused):
    kind = RefusalKind.OTHER_SESSION
    spdm_error = UnexpectedRequest


class MalformedVdm(VdmRefused):
    kind = RefusalKind.MALFORMED
    spdm_error = InvalidRequest


class UnknownProtocol(VdmRefused):
    kind = RefusalKind.UNKNOWN_PROTOCOL
    spdm_error = UnsupportedRequest

    def spdm_refusal(self) -> RequestRefused:
        return UnsupportedRequest(0, str(self))  # ErrorData 0: no SPDM request code of its own


class NoKeys(VdmRefused):
    kind = RefusalKind.INVALID_STATE
    spdm_error = UnexpectedRequest


# ---- responder side: TDISP_ERROR ----------------------------------------------------


class TdispRequestError(IdeTdispError):
    """Raised inside the TDISP responder; becomes a TDISP_ERROR response with the class's
    `code` (PCIe 6.2 §11.3.17)."""

    code: ClassVar[ErrorCode] = ErrorCode.UNSPECIFIED
    _by_code: ClassVar[dict[ErrorCode, type[TdispRequestError]]] = {}

    def __init__(self, reason: str = "", data: int = 0, extended: bytes = b"") -> None:
        self.reason = reason
        self.data = data
        self.extended = extended
        name = self.code.name
        super().__init__(f"{name}: {reason}" if reason else name)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        TdispRequestError._by_code[cls.code] = cls

    @staticmethod
    def for_code(code: ErrorCode) -> type[TdispRequestError]:
        """The class of a code a transition table names (tdisp.tdi_state)."""
        return TdispRequestError._by_code[code]


class InvalidTdispRequest(TdispRequestError):
    code = ErrorCode.INVALID_REQUEST


class TdispBusy(TdispRequestError):
    code = ErrorCode.BUSY


class InvalidInterfaceState(TdispRequestError):
    code = ErrorCode.INVALID_INTERFACE_STATE


class TdispUnspecified(TdispRequestError):
    code = ErrorCode.UNSPECIFIED


class UnsupportedTdispRequest(TdispRequestError):
    code = ErrorCode.UNSUPPORTED_REQUEST


class TdispVersionMismatch(TdispRequestError):
    code = ErrorCode.VERSION_MISMATCH


class InvalidInterface(TdispRequestError):
    code = ErrorCode.INVALID_INTERFACE


class InvalidNonce(TdispRequestError):
    code = ErrorCode.INVALID_NONCE


class InsufficientEntropy(TdispRequestError):
    code = ErrorCode.INSUFFICIENT_ENTROPY


class InvalidDeviceConfiguration(TdispRequestError):
    code = ErrorCode.INVALID_DEVICE_CONFIGURATION


# ---- requester side -----------------------------------------------------------------


class TdispProtocolError(IdeTdispError):
    """Requester side: the device's response is not acceptable."""


class MalformedMessage(TdispProtocolError):
    """Bytes do not match the wire declaration (length, constant, trailing data)."""


class UnexpectedResponse(TdispProtocolError):
    """Well-formed, but not the response to the request that was sent."""


class TdispErrorResponse(TdispProtocolError):
    """The device answered TDISP_ERROR (PCIe 6.2 §11.3.17); `code` is the one it sent."""

    def __init__(self, code: int, name: str, data: int, extended: bytes) -> None:
        self.code = code
        self.name = name
        self.data = data
        self.extended = extended
        super().__init__(f"TDISP_ERROR {name} (0x{code:x}), data 0x{data:x}")


class IdeKmStatusError(TdispProtocolError):
    """Requester side: KP_ACK carried a non-zero status."""

    def __init__(self, status: int, name: str) -> None:
        self.status = status
        self.name = name
        super().__init__(f"KP_ACK status {name} ({status})")


__all__ = [
    "IdeTdispError",
    "InsufficientEntropy",
    "InvalidDeviceConfiguration",
    "InvalidInterface",
    "InvalidInterfaceState",
    "InvalidNonce",
    "InvalidTdispRequest",
    "IdeKmStatusError",
    "MalformedMessage",
    "MalformedVdm",
    "NoKeys",
    "NoSession",
    "OtherSession",
    "RefusalKind",
    "TdispBusy",
    "TdispErrorResponse",
    "TdispProtocolError",
    "TdispRequestError",
    "TdispUnspecified",
    "TdispVersionMismatch",
    "UnexpectedResponse",
    "UnknownProtocol",
    "UnsupportedTdispRequest",
    "VdmRefused",
    "error_name",
]
