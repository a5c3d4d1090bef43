"""Every exception the TSM model raises, rooted at `TsmError`, and the errno a kernel relay
reports for a failed operation.

    TsmError                  errno (class attribute, positive like OSError.errno)
    +-- TransportFailure      the relay's own errno (e.g. pci_doe's EIO / ETIMEDOUT), else EIO
    +-- TsmStateError         EINVAL: not possible in the model's current state
    |   +-- NotConnected      ENOTCONN: needs the SPDM session
    |   +-- TdiNotRunning     START acknowledged, another state read back: EPROTO
    |                         (EIO when that state is ERROR: the TDI failed)
    +-- ReportMismatch        EACCES: the interface report disagrees with the host's BARs
    +-- PolicyViolation       EACCES: the evidence does not meet the reference values
    +-- PolicyError           EINVAL: the reference-values file is malformed

The engines below raise their own exceptions (spdm.errors, tdisp.errors); `ENGINE_ERRNOS`
gives the errno of each of those classes, found by walking the exception's MRO, and a
device's refusal (SPDM ERROR, TDISP_ERROR) is refined by its wire code where the code
says more than "the device refused".  `errno_of` is that lookup, not a chain of
isinstance checks; `describe` words a failure the same way.
"""

from __future__ import annotations

import errno as errno_mod

from spdm.codes import ErrorCode as SpdmErrorCode
from spdm.errors import (
    CertificateError,
    ErrorResponse,
    PeerError,
    RecordAuthenticationError,
    VerificationError,
)
from tdisp.codes import ErrorCode as TdispErrorCode
from tdisp.codes import TdiState
from tdisp.errors import IdeKmStatusError, TdispErrorResponse, TdispProtocolError


class TsmError(Exception):
    """Root of the TSM model's exceptions; `errno` is what a relay reports for it."""

    errno: int = errno_mod.EIO


class TransportFailure(TsmError):
    """Injected into an operation by `fail()`: the DOE exchange did not complete."""

    def __init__(self, cause: int | str) -> None:
        self.cause = cause
        if isinstance(cause, int) and cause:
            self.errno = abs(cause)
        super().__init__(describe_transport_failure(cause))


def describe_transport_failure(cause: int | str) -> str:
    if isinstance(cause, int):
        code = abs(cause)
        name = errno_mod.errorcode.get(code, "?")
        return f"transport failure: errno {cause} ({'-' if cause < 0 else ''}{name})"
    return f"transport failure: {cause}"


class TsmStateError(TsmError):
    """The operation is not possible in the model's current state."""

    errno = errno_mod.EINVAL


class NotConnected(TsmStateError):
    """An operation that needs the SPDM session, without one."""

    errno = errno_mod.ENOTCONN


class TdiNotRunning(TsmStateError):
    """START was acknowledged, yet the device reports the TDI in another state: a device
    gone to ERROR failed (EIO); any other state contradicts its own answer (EPROTO)."""

    errno = errno_mod.EPROTO

    def __init__(self, message: str, state: TdiState) -> None:
        super().__init__(message)
        self.state = state
        if state == TdiState.ERROR:
            self.errno = errno_mod.EIO


class ReportMismatch(TsmError):
    """The interface report disagrees with the host's view of the BARs."""

    errno = errno_mod.EACCES


class PolicyViolation(TsmError):
    """The device's evidence does not meet the policy (reason names index/expected/got)."""

    errno = errno_mod.EACCES


class PolicyError(TsmError, ValueError):
    """The reference-values file is malformed."""

    errno = errno_mod.EINVAL


#: errno of the engines' exceptions, by class (the most specific class in the MRO wins).
ENGINE_ERRNOS: dict[type[BaseException], int] = {
    CertificateError: errno_mod.EACCES,  # untrusted chain
    VerificationError: errno_mod.EACCES,  # bad signature or verify data
    RecordAuthenticationError: errno_mod.EBADMSG,  # a response record does not authenticate
    ErrorResponse: errno_mod.EIO,  # the device answered SPDM ERROR
    PeerError: errno_mod.EPROTO,  # malformed / unexpected / wrong-version SPDM reply
    TdispErrorResponse: errno_mod.EIO,  # the device answered TDISP_ERROR
    IdeKmStatusError: errno_mod.EIO,  # KP_ACK status: the device refused the key
    TdispProtocolError: errno_mod.EPROTO,  # malformed / unexpected IDE_KM or TDISP reply
}

#: A device refusal whose wire code says more than "refused": a Busy device is worth
#: retrying (EBUSY, after the requester's own retries for SPDM); a START_INTERFACE_NONCE
#: the device does not accept is a refused credential, not a device failure (EACCES).
REFUSAL_ERRNOS: dict[tuple[type[BaseException], int], int] = {
    (ErrorResponse, SpdmErrorCode.BUSY): errno_mod.EBUSY,
    (TdispErrorResponse, TdispErrorCode.BUSY): errno_mod.EBUSY,
    (TdispErrorResponse, TdispErrorCode.INVALID_NONCE): errno_mod.EACCES,
}


def _refusal_code(error: BaseException) -> int | None:
    if isinstance(error, ErrorResponse | TdispErrorResponse):
        return error.code
    return None


def errno_of(error: BaseException) -> int:
    """The negative errno a relay reports for a failed operation (`Done.errno`): the
    TSM's own errors carry it, the engines' are looked up by class; anything else is a
    bug behind a generic -EIO."""
    if isinstance(error, TsmError):
        return -error.errno
    code = _refusal_code(error)
    for cls in type(error).__mro__:
        refined = REFUSAL_ERRNOS.get((cls, code)) if code is not None else None
        if refined is not None:
            return -refined
        if cls in ENGINE_ERRNOS:
            return -ENGINE_ERRNOS[cls]
    return -errno_mod.EIO


#: How a failure reads in a reason line, by class (MRO walk as for errno_of).
DESCRIPTIONS: dict[type[BaseException], str] = {
    CertificateError: "certificate chain not trusted: ",
    ErrorResponse: "device answered SPDM ERROR: ",
    PeerError: "SPDM protocol error: ",
    TdispErrorResponse: "device answered ",
    IdeKmStatusError: "device refused the key: ",
    TdispProtocolError: "bad IDE_KM/TDISP response: ",
    PolicyViolation: "measurement policy violated: ",
    TsmError: "",
}


def describe(error: BaseException) -> str:
    """A readable reason for a failed operation."""
    for cls in type(error).__mro__:
        if cls in DESCRIPTIONS:
            return f"{DESCRIPTIONS[cls]}{error}"
    return f"{type(error).__name__}: {error}"


__all__ = [
    "DESCRIPTIONS",
    "ENGINE_ERRNOS",
    "REFUSAL_ERRNOS",
    "NotConnected",
    "PolicyError",
    "PolicyViolation",
    "ReportMismatch",
    "TdiNotRunning",
    "TransportFailure",
    "TsmError",
    "TsmStateError",
    "describe",
    "describe_transport_failure",
    "errno_of",
]
