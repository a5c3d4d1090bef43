"""Exceptions used by the SPDM engines."""

from __future__ import annotations

from spdm.codes import ErrorCode


class SpdmError(Exception):
    """A condition the responder reports as an SPDM ERROR message (DSP0274 ERROR clause)."""

    def __init__(
        self, code: ErrorCode | int, data: int = 0, extended: bytes = b"", reason: str = ""
    ) -> None:
        self.code = int(code)
        self.data = data
        self.extended = extended
        self.reason = reason
        try:
            name = ErrorCode(self.code).name
        except ValueError:
            name = hex(self.code)
        super().__init__(f"{name}: {reason}" if reason else name)


class InvalidRequest(SpdmError):
    def __init__(self, reason: str = "") -> None:
        super().__init__(ErrorCode.INVALID_REQUEST, reason=reason)


class UnexpectedRequest(SpdmError):
    def __init__(self, reason: str = "") -> None:
        super().__init__(ErrorCode.UNEXPECTED_REQUEST, reason=reason)


class UnsupportedRequest(SpdmError):
    def __init__(self, request_code: int, reason: str = "") -> None:
        # DSP0274: ErrorData of UnsupportedRequest carries the unsupported request code.
        super().__init__(ErrorCode.UNSUPPORTED_REQUEST, data=request_code, reason=reason)


class DecryptError(SpdmError):
    def __init__(self, reason: str = "") -> None:
        super().__init__(ErrorCode.DECRYPT_ERROR, reason=reason)


class ProtocolError(Exception):
    """Requester side: the peer's response is malformed, unexpected or fails verification."""


class VerificationError(ProtocolError):
    """Requester side: a signature, VerifyData or CertChainHash of the peer does not
    verify -- the peer failed to prove who it is (a relay reports -EACCES)."""


class RecordAuthenticationError(ProtocolError):
    """Requester side: a secured response record does not authenticate (AEAD tag,
    DSP0277) -- as the kernel's AEAD reports a bad tag (-EBADMSG)."""


class ErrorResponse(ProtocolError):
    """Requester side: the responder answered with an SPDM ERROR."""

    def __init__(self, code: int, data: int, extended: bytes) -> None:
        self.code = code
        self.data = data
        self.extended = extended
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = hex(code)
        super().__init__(f"responder returned ERROR {name} (data 0x{data:02x})")


class CertificateError(ProtocolError):
    """Certificate chain validation failed."""


class RecordError(Exception):
    """A secured-message record could not be authenticated or decoded (DSP0277)."""
