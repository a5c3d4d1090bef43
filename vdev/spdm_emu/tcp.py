"""TCP options both ends of the spdm-emu socket use (docs/protocols.md §9.4).

DMTF's emulators and QEMU write a frame's header words and payload in separate send()
calls without TCP_NODELAY.  Nagle's algorithm then holds the second write until the
first is acknowledged, and a Linux receiver in request/response ("pingpong") mode delays
that ACK by up to 40 ms: every exchange stalls.  Re-arming TCP_QUICKACK after each read
makes our side acknowledge at once (Linux clears the flag again by itself, so it has to
be set after every read, not once).
"""

from __future__ import annotations

import contextlib
import socket


def set_nodelay(sock: socket.socket) -> None:
    """Our own frames go out in one write; never wait for the peer's ACK to send one."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def rearm_quickack(sock: socket.socket | None) -> None:
    """Acknowledge what arrives immediately (Linux; a no-op where TCP_QUICKACK is absent)."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
