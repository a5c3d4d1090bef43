"""Exceptions shared by the IDE_KM and TDISP engines.

Two families:

* Responder side: `VdmRefused` is raised by a handler when the PCI-SIG vendor-defined
  protocol defines *no* response for a request (IDE_KM has no error message at all,
  PCIe 6.2 §6.33.3; TDISP requires a secured session, §11.3).  The SPDM responder maps
  it to an SPDM ERROR; `spdm_error_code` is the code we suggest.  `TdispRequestError`
  is internal to the TDISP responder and becomes a TDISP_ERROR message on the wire.
* Requester side: `MalformedMessage` (bytes do not match the declaration),
  `UnexpectedResponse` (well-formed but not what was asked for) and
  `TdispErrorResponse` (the device answered TDISP_ERROR), all `TdispProtocolError`.
"""

from __future__ import annotations

import enum


class SpdmErrorHint(enum.IntEnum):
    """DSP0274 §10.10 ERROR codes we suggest to the SPDM layer for a refused VDM."""

    INVALID_REQUEST = 0x01
    BUSY = 0x03
    UNEXPECTED_REQUEST = 0x04
    UNSUPPORTED_REQUEST = 0x07
    SESSION_REQUIRED = 0x0B


class RefusalKind(enum.Enum):
    NO_SESSION = "no-session"  # IDE_KM/TDISP must arrive inside a secured session
    OTHER_SESSION = "other-session"  # IDE_KM is owned by another, still open session
    MALFORMED = "malformed"  # framing too broken to answer within the protocol
    UNKNOWN_PROTOCOL = "unknown-protocol"  # ProtocolID other than IDE_KM / TDISP
    INVALID_STATE = "invalid-state"  # e.g. K_SET_GO for a key set never programmed


_HINTS = {
    RefusalKind.NO_SESSION: SpdmErrorHint.SESSION_REQUIRED,
    RefusalKind.OTHER_SESSION: SpdmErrorHint.UNEXPECTED_REQUEST,
    RefusalKind.MALFORMED: SpdmErrorHint.INVALID_REQUEST,
    RefusalKind.UNKNOWN_PROTOCOL: SpdmErrorHint.UNSUPPORTED_REQUEST,
    RefusalKind.INVALID_STATE: SpdmErrorHint.UNEXPECTED_REQUEST,
}


class VdmRefused(Exception):
    """The vendor-defined request gets no protocol-level response.

    The SPDM responder should answer with an SPDM ERROR (`spdm_error_code`), or drop
    the request where its transport allows (tee-io-validator IdeKmTestCase 5.1 only
    checks that no IDE_KM response comes back).
    """

    def __init__(self, kind: RefusalKind, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        self.spdm_error_code = int(_HINTS[kind])
        super().__init__(f"{kind.value}: {reason}")


class TdispProtocolError(Exception):
    """Requester side: the device's response is not acceptable."""


class MalformedMessage(TdispProtocolError):
    """Bytes do not match the wire declaration (length, constant, trailing data)."""


class UnexpectedResponse(TdispProtocolError):
    """Well-formed, but not the response to the request that was sent."""


class TdispErrorResponse(TdispProtocolError):
    """The device answered TDISP_ERROR (PCIe 6.2 §11.3.17)."""

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
