"""Every exception the spdm package raises: one root, `SpdmError`, whose subclasses carry
the SPDM ERROR code (DSP0274 ERROR, "ErrorCode and ErrorData") on the class.

    SpdmError                      code = Unspecified unless a subclass says otherwise
    +-- RequestRefused             responder: this request is answered with ERROR `code`
    |   +-- InvalidRequest, Busy, UnexpectedRequest, UnsupportedRequest, DecryptError,
    |       SessionLimitExceeded, SessionRequired, RequestTooLarge, VersionMismatch, ...
    +-- PeerError                  requester: the peer's response is unacceptable
    |   +-- VerificationError      a signature, VerifyData or CertChainHash does not verify
    |   +-- RecordAuthenticationError   a secured response record does not authenticate
    |   +-- CertificateError       the certificate chain does not validate
    |   +-- ErrorResponse          the responder answered ERROR (`code` is the received one)
    +-- RecordError                a DSP0277 record cannot be decoded or authenticated
    +-- ForeignPayload             an authenticated record carries another protocol
    +-- MessageFormatError         bytes do not match the message declaration
    +-- OpaqueError                malformed OpaqueData (DSP0274 "General opaque data")
    +-- CryptoError                an algorithm or key the crypto layer cannot use
    +-- PskFormatError             a provisioned PSK entry does not parse (spdm.psk)
    +-- RequesterInfoError         GET_CSR RequesterInfo that does not parse

A responder turns whatever escapes a request handler into an ERROR message with
`exc.code`, a class attribute (and the instance's ErrorData / ExtendedErrorData): the
code is a lookup on the class, never a chain of isinstance checks.  Only
`ErrorResponse` sets `code` per instance: the code the peer sent.
"""

from __future__ import annotations

from spdm.codes import ErrorCode


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return hex(code)


class SpdmError(Exception):
    """Root of the spdm package's exceptions.  `code`: the ERROR a responder answers
    with when this escapes a request handler; `data` / `extended`: its ErrorData and
    ExtendedErrorData."""

    code: int = ErrorCode.UNSPECIFIED
    data: int = 0
    extended: bytes = b""


# ---- responder side -----------------------------------------------------------------


class RequestRefused(SpdmError):
    """The request is answered with an SPDM ERROR of the class's `code`."""

    def __init__(self, reason: str = "", *, data: int = 0, extended: bytes = b"") -> None:
        self.reason = reason
        self.data = data
        self.extended = extended
        name = _code_name(self.code)
        super().__init__(f"{name}: {reason}" if reason else name)


class InvalidRequest(RequestRefused):
    code = ErrorCode.INVALID_REQUEST


class Busy(RequestRefused):
    code = ErrorCode.BUSY


class UnexpectedRequest(RequestRefused):
    code = ErrorCode.UNEXPECTED_REQUEST


class Unspecified(RequestRefused):
    code = ErrorCode.UNSPECIFIED


class DecryptError(RequestRefused):
    code = ErrorCode.DECRYPT_ERROR


class UnsupportedRequest(RequestRefused):
    """ErrorData carries the unsupported request code (DSP0274 ERROR, UnsupportedRequest)."""

    code = ErrorCode.UNSUPPORTED_REQUEST

    def __init__(self, request_code: int, reason: str = "") -> None:
        super().__init__(reason, data=request_code)


class SessionLimitExceeded(RequestRefused):
    code = ErrorCode.SESSION_LIMIT_EXCEEDED


class SessionRequired(RequestRefused):
    code = ErrorCode.SESSION_REQUIRED


class RequestTooLarge(RequestRefused):
    code = ErrorCode.REQUEST_TOO_LARGE


class OperationFailed(RequestRefused):
    """1.3: the request was well-formed but the operation could not be carried out."""

    code = ErrorCode.OPERATION_FAILED


class VersionMismatch(RequestRefused):
    code = ErrorCode.VERSION_MISMATCH


# ---- requester side -----------------------------------------------------------------


class PeerError(SpdmError):
    """Requester side: the peer's response is malformed, unexpected or fails verification."""


class VerificationError(PeerError):
    """A signature, VerifyData or CertChainHash of the peer does not verify -- the peer
    failed to prove who it is (a relay reports -EACCES)."""


class RecordAuthenticationError(PeerError):
    """A secured response record does not authenticate (AEAD tag, DSP0277) -- as the
    kernel's AEAD reports a bad tag (-EBADMSG)."""


class CertificateError(PeerError):
    """Certificate chain validation failed."""


class ErrorResponse(PeerError):
    """The responder answered with an SPDM ERROR; `code` is the one it sent."""

    def __init__(self, code: int, data: int, extended: bytes) -> None:
        self.code = code
        self.data = data
        self.extended = extended
        super().__init__(f"responder returned ERROR {_code_name(code)} (data 0x{data:02x})")


# ---- codecs -------------------------------------------------------------------------


class RecordError(SpdmError):
    """A secured-message record could not be authenticated or decoded (DSP0277)."""

    code = ErrorCode.DECRYPT_ERROR


class ForeignPayload(SpdmError):
    """An authenticated DSP0277 record whose application data is not an SPDM message:
    over MCTP the secured payload is an MCTP message of any type (DSP0277 protects
    application data, not only SPDM), e.g. PLDM (type 0x01).  The record itself was
    fine, so the session and its sequence numbers stand; the responder answers, inside
    the session, that it does not support the request."""

    code = ErrorCode.UNSUPPORTED_REQUEST

    def __init__(self, message_type: int | None) -> None:
        self.message_type = message_type
        what = "empty" if message_type is None else f"message type {message_type:#04x}"
        super().__init__(f"secured application data is not SPDM ({what})")


class MessageFormatError(SpdmError):
    """The bytes do not match the declaration (length, constant or trailing data)."""

    code = ErrorCode.INVALID_REQUEST


class OpaqueError(SpdmError):
    """OpaqueData that does not follow DSP0274's general opaque data format."""

    code = ErrorCode.INVALID_REQUEST


class CryptoError(SpdmError):
    """An algorithm, key or value the crypto layer cannot use."""


class PskFormatError(SpdmError, ValueError):
    """A PSK entry (spdm.psk) that does not parse; the message names the entry, never
    the key."""


class RequesterInfoError(SpdmError, ValueError):
    """GET_CSR RequesterInfo that is not a DER CertificationRequestInfo (spdm.provisioning)."""

    code = ErrorCode.INVALID_REQUEST
