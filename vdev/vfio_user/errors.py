"""Exceptions shared by the vfio-user server modules."""

from __future__ import annotations


class ProtocolError(Exception):
    """A request the server refuses: becomes an error reply with `errno`.

    The stream is still in sync when this is raised; the connection goes on.
    """

    def __init__(self, errno_value: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_value


class DropClient(Exception):
    """The stream is out of sync or the peer is gone: close this client."""


class DmaError(OSError):
    """A DMA access the adapter could not perform (unmapped, denied, timed out)."""


class VfioUserError(OSError):
    """Client side: the server answered a request with an error reply."""
