"""SPDM connection and session state as explicit transition tables (h11 style).

Each table maps (state, request code) to the next state. A request absent from the table in
the current state is answered with UnexpectedRequest (DSP0274 ERROR clause, Table 'ERROR codes').
Tests enumerate these tables directly.
"""

from __future__ import annotations

import enum

from spdm.codes import Req


class ConnState(enum.Enum):
    NOT_STARTED = "not-started"
    AFTER_VERSION = "after-version"
    AFTER_CAPABILITIES = "after-capabilities"
    NEGOTIATED = "negotiated"


class SessionState(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    ENDED = "ended"


# DSP0274 1.3 Table 6: allowed in and outside sessions, once negotiated.
_PROVISIONING = (
    Req.GET_CSR,
    Req.SET_CERTIFICATE,
    Req.GET_KEY_PAIR_INFO,
    Req.GET_MEASUREMENT_EXTENSION_LOG,
    Req.GET_ENDPOINT_INFO,
)

# Requests that operate on an already negotiated connection (DSP0274 'Connection' behaviour).
_NEGOTIATED_REQUESTS = (
    Req.GET_DIGESTS,
    Req.GET_CERTIFICATE,
    Req.CHALLENGE,
    Req.GET_MEASUREMENTS,
    Req.KEY_EXCHANGE,
    Req.PSK_EXCHANGE,
    Req.VENDOR_DEFINED_REQUEST,
    Req.CHUNK_SEND,
    Req.CHUNK_GET,
    Req.GET_ENCAPSULATED_REQUEST,
    Req.DELIVER_ENCAPSULATED_RESPONSE,
    *_PROVISIONING,
)

CONNECTION_TRANSITIONS: dict[tuple[ConnState, Req], ConnState] = {
    # GET_VERSION may be issued at any time and restarts the connection (DSP0274 GET_VERSION).
    **{(s, Req.GET_VERSION): ConnState.AFTER_VERSION for s in ConnState},
    (ConnState.AFTER_VERSION, Req.GET_CAPABILITIES): ConnState.AFTER_CAPABILITIES,
    (ConnState.AFTER_CAPABILITIES, Req.NEGOTIATE_ALGORITHMS): ConnState.NEGOTIATED,
    **{(ConnState.NEGOTIATED, r): ConnState.NEGOTIATED for r in _NEGOTIATED_REQUESTS},
    # Chunking is agreed in GET_CAPABILITIES, so a NEGOTIATE_ALGORITHMS above the
    # responder's DataTransferSize (SPDM 1.4 with PQC AlgStructs at MinDataTransferSize)
    # already travels in CHUNK_SEND.  The chunk messages change no state themselves: the
    # request they carry does.
    (ConnState.AFTER_CAPABILITIES, Req.CHUNK_SEND): ConnState.AFTER_CAPABILITIES,
    (ConnState.AFTER_CAPABILITIES, Req.CHUNK_GET): ConnState.AFTER_CAPABILITIES,
}
CHUNK_REQUESTS = frozenset({Req.CHUNK_SEND, Req.CHUNK_GET})

# Requests only meaningful inside a session (record or, for FINISH with
# HANDSHAKE_IN_THE_CLEAR, the session named by the last KEY_EXCHANGE).
SESSION_ONLY_REQUESTS = frozenset(
    {Req.FINISH, Req.PSK_FINISH, Req.HEARTBEAT, Req.KEY_UPDATE, Req.END_SESSION}
)

# Requests not allowed inside a secured session (DSP0274 1.2 Table 'SPDM request codes',
# column 'allowed in session').
NOT_IN_SESSION = frozenset(
    {
        Req.GET_VERSION,
        Req.GET_CAPABILITIES,
        Req.NEGOTIATE_ALGORITHMS,
        Req.KEY_EXCHANGE,
        Req.PSK_EXCHANGE,
        Req.CHALLENGE,
    }
)

_ESTABLISHED_REQUESTS = (
    Req.HEARTBEAT,
    Req.KEY_UPDATE,
    Req.GET_DIGESTS,
    Req.GET_CERTIFICATE,
    Req.GET_MEASUREMENTS,
    Req.VENDOR_DEFINED_REQUEST,
    Req.CHUNK_SEND,
    Req.CHUNK_GET,
    Req.GET_ENCAPSULATED_REQUEST,
    Req.DELIVER_ENCAPSULATED_RESPONSE,
    *_PROVISIONING,
)

SESSION_TRANSITIONS: dict[tuple[SessionState, Req], SessionState] = {
    (SessionState.HANDSHAKING, Req.FINISH): SessionState.ESTABLISHED,
    (SessionState.HANDSHAKING, Req.PSK_FINISH): SessionState.ESTABLISHED,
    # Encapsulated mutual-auth flow runs during the handshake (DSP0274 GET_ENCAPSULATED_REQUEST).
    (SessionState.HANDSHAKING, Req.GET_ENCAPSULATED_REQUEST): SessionState.HANDSHAKING,
    (SessionState.HANDSHAKING, Req.DELIVER_ENCAPSULATED_RESPONSE): SessionState.HANDSHAKING,
    # A FINISH carrying an ML-DSA signature, or a large encapsulated response, may need
    # CHUNK_SEND / CHUNK_GET before the session is established.
    (SessionState.HANDSHAKING, Req.CHUNK_SEND): SessionState.HANDSHAKING,
    (SessionState.HANDSHAKING, Req.CHUNK_GET): SessionState.HANDSHAKING,
    **{(SessionState.ESTABLISHED, r): SessionState.ESTABLISHED for r in _ESTABLISHED_REQUESTS},
    (SessionState.ESTABLISHED, Req.END_SESSION): SessionState.ENDED,
}


def connection_next(state: ConnState, request: Req) -> ConnState | None:
    return CONNECTION_TRANSITIONS.get((state, request))


def session_next(state: SessionState, request: Req) -> SessionState | None:
    return SESSION_TRANSITIONS.get((state, request))
