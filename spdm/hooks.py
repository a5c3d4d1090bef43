"""Observation and instrumentation around the SPDM engines, kept apart from their settings.

A `ResponderConfig` / `RequesterConfig` says how the engine speaks SPDM; the hooks here
only watch it (tracing, session bookkeeping of the device around it) or, for fault
injection and tests, stand between the engine and its peer.  None of them changes what
a correct engine does when it is left unset, and every one is a pure callback: the
engines do no I/O, so a hook must not block and must not raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: ("request" | "response", session id, plaintext SPDM message) of every secured message.
MessageObserver = Callable[[str, int, bytes], None]
#: ("DHE Secret" | "PSK", bytes) per session: an opt-in debugging aid, so that traces can
#: be decrypted with spdm_dump; never set by default, and the engines never log secrets.
SecretSink = Callable[[str, bytes], None]
#: A session id, when the session reaches the application phase or ends.
SessionObserver = Callable[[int], None]
#: A request code -> whether to answer it Busy / ResponseNotReady.
RequestPredicate = Callable[[int], bool]
#: (session id or None, plaintext request, process) -> the plaintext response that goes
#: out; `process(request)` runs the engine.
MessageInterceptor = Callable[[int | None, bytes, Callable[[bytes], bytes]], bytes]


@dataclass
class RequesterHooks:
    """Requester side: `message_observer` sees each secured message right before the
    request is sealed and right after the response record is opened."""

    message_observer: MessageObserver | None = None
    secret_sink: SecretSink | None = None


@dataclass
class ResponderHooks:
    """Responder side.

    `message_observer` sees each secured message right after the request record is
    opened and right before the response is sealed.  `on_session_established` fires
    after FINISH_RSP / PSK_FINISH_RSP is sent, `on_session_end` when a session ends for
    any reason (END_SESSION, DecryptError, heartbeat expiry, GET_VERSION, reset()).
    Fault seams (vdev.faults, tests): `busy` / `not_ready` answer a request code with
    Busy / ResponseNotReady; `message_interceptor` sees every plaintext request (DOE
    type 1, or a secured record after it was opened) and decides what goes out."""

    message_observer: MessageObserver | None = None
    secret_sink: SecretSink | None = None
    on_session_established: SessionObserver | None = None
    on_session_end: SessionObserver | None = None
    busy: RequestPredicate | None = None
    not_ready: RequestPredicate | None = None
    message_interceptor: MessageInterceptor | None = None
