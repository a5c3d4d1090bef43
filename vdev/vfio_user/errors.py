"""Exceptions of the vfio-user adapter, rooted at `VfioUserException`.

A refused request (`ProtocolError`) and a client-side error reply (`VfioUserError`) carry
the errno of the vfio-user error reply; `DmaError` and `VfioUserError` are also OSErrors,
so callers that handle I/O failures catch them with the rest.
"""

from __future__ import annotations


class VfioUserException(Exception):
    """Root of the vfio_user package's exceptions."""


class ProtocolError(VfioUserException):
    """A request the server refuses: becomes an error reply with `errno`.

    The stream is still in sync when this is raised; the connection goes on.
    """

    def __init__(self, errno_value: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_value


class DropClient(VfioUserException):
    """The stream is out of sync or the peer is gone: close this client."""


class DmaError(VfioUserException, OSError):
    """A DMA access the adapter could not perform (unmapped, denied, timed out)."""


class VfioUserError(VfioUserException, OSError):
    """Client side: the server answered a request with an error reply."""
